"""Type stubs for the compiled module (private: use the public fastsim API)."""

import numpy as np
import numpy.typing as npt

def simd_level() -> str: ...
def simd_levels() -> list[str]: ...
def set_simd_level(level: str) -> None: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def openmp_enabled() -> bool: ...
def gemm_block_bytes() -> int: ...
def set_gemm_block_bytes(bytes: int) -> None: ...
def rnn_projection() -> int: ...
def set_rnn_projection(mode: int) -> None: ...
def compiler() -> str: ...
def micro_tile(f64: bool = False) -> tuple[int, int]: ...
def fma_peak_gflops(f64: bool = False, seconds: float = 0.2, threads: int = 1) -> float: ...
def cosine_matrix(
    a: npt.NDArray[np.floating], b: npt.NDArray[np.floating] | None, out: npt.NDArray[np.floating] | None
) -> npt.NDArray[np.floating]: ...
def cosine_rows(
    a: npt.NDArray[np.floating], b: npt.NDArray[np.floating], out: npt.NDArray[np.floating] | None
) -> npt.NDArray[np.floating]: ...
def cosine_pair(u: npt.NDArray[np.floating], v: npt.NDArray[np.floating]) -> np.floating: ...
def gemm_nt(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating], out: npt.NDArray[np.floating]) -> None: ...
def triplet_forward(
    v1: npt.NDArray[np.floating], v2: npt.NDArray[np.floating], empty: int
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.floating], npt.NDArray[np.floating], npt.NDArray[np.int64]]: ...
def hard_negatives(
    sim: npt.NDArray[np.floating], empty: int
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.floating], npt.NDArray[np.floating], npt.NDArray[np.int64]]: ...
def triplet_cost(
    v1: npt.NDArray[np.floating], v2: npt.NDArray[np.floating], margin: float, empty: int, mean: bool
) -> np.floating: ...
def triplet_backward(
    v1: npt.NDArray[np.floating],
    v2: npt.NDArray[np.floating],
    closest_idx: npt.NDArray[np.int64],
    active1: npt.NDArray[np.uint8],
    active2: npt.NDArray[np.uint8],
    weight: float | npt.NDArray[np.float64],
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.floating]]: ...
def vec_math(fn: str, x: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]: ...

class RnnInputTable:
    @property
    def vocab_size(self) -> int: ...
    @property
    def nbytes(self) -> int: ...

class RnnLayer:
    def __init__(
        self,
        cell: int,
        W_ih: npt.NDArray[np.floating],
        W_hh: npt.NDArray[np.floating],
        b_ih: npt.NDArray[np.floating] | None,
        b_hh: npt.NDArray[np.floating] | None,
    ) -> None: ...
    def run(
        self,
        x: npt.NDArray[np.floating],
        B: int,
        T: int,
        batch_first: bool,
        lengths: npt.NDArray[np.int64] | None,
        reverse: bool,
        h: npt.NDArray[np.floating],
        c: npt.NDArray[np.floating] | None,
        out: npt.NDArray[np.floating] | None,
        out_ld: int,
        out_off: int,
        pool: npt.NDArray[np.floating] | None = None,
        pool_until: npt.NDArray[np.int64] | None = None,
    ) -> None: ...
    def project(self, embedding: npt.NDArray[np.floating]) -> RnnInputTable: ...
    def is_current(self, table: RnnInputTable) -> bool: ...
    def run_ids(
        self,
        table: RnnInputTable,
        ids: npt.NDArray[np.int64],
        B: int,
        T: int,
        lengths: npt.NDArray[np.int64] | None,
        reverse: bool,
        h: npt.NDArray[np.floating],
        c: npt.NDArray[np.floating] | None,
        out: npt.NDArray[np.floating] | None,
        out_ld: int,
        out_off: int,
        pool: npt.NDArray[np.floating] | None = None,
        pool_until: npt.NDArray[np.int64] | None = None,
    ) -> None: ...
    @property
    def is_f64(self) -> bool: ...
def top_k(
    queries: npt.NDArray[np.floating], corpus: npt.NDArray[np.floating], k: int, exclude_self: bool
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.int64]]: ...

# Training form of the recurrent layers (rnn/train.hpp): one direction, time-major, caller-allocated arrays.
def rnn_train_forward(
    cell: int, x: npt.NDArray[np.floating], W_ih: npt.NDArray[np.floating], W_hh: npt.NDArray[np.floating],
    b_ih: npt.NDArray[np.floating], b_hh: npt.NDArray[np.floating], lengths: npt.NDArray[np.int64], reverse: bool,
    h: npt.NDArray[np.floating], c: npt.NDArray[np.floating] | None, out: npt.NDArray[np.floating],
    act: npt.NDArray[np.floating], h_prev: npt.NDArray[np.floating], c_prev: npt.NDArray[np.floating] | None,
    tanh_c: npt.NDArray[np.floating] | None,
) -> None: ...
def rnn_train_backward(
    cell: int, x: npt.NDArray[np.floating], W_ih: npt.NDArray[np.floating], W_hh: npt.NDArray[np.floating],
    lengths: npt.NDArray[np.int64], reverse: bool, act: npt.NDArray[np.floating], h_prev: npt.NDArray[np.floating],
    c_prev: npt.NDArray[np.floating] | None, tanh_c: npt.NDArray[np.floating] | None,
    d_out: npt.NDArray[np.floating], dh: npt.NDArray[np.floating], dc: npt.NDArray[np.floating] | None,
    dx: npt.NDArray[np.floating], dW_ih: npt.NDArray[np.floating], dW_hh: npt.NDArray[np.floating],
    db_ih: npt.NDArray[np.floating], db_hh: npt.NDArray[np.floating],
) -> None: ...
def adam_dense(
    p: npt.NDArray[np.floating], m: npt.NDArray[np.floating], v: npt.NDArray[np.floating],
    g: npt.NDArray[np.floating], step_size: float, beta1: float, beta2: float, eps: float, bc2_sqrt: float,
    weight_decay: float,
) -> None: ...
def adam_rows(
    p: npt.NDArray[np.floating], m: npt.NDArray[np.floating], v: npt.NDArray[np.floating],
    rows: npt.NDArray[np.int64], values: npt.NDArray[np.floating], step_size: float, beta1: float, beta2: float,
    eps: float, bc2_sqrt: float, lazy: bool,
) -> None: ...
def segment_sum_rows(
    src: npt.NDArray[np.floating], order: npt.NDArray[np.int64], starts: npt.NDArray[np.int64]
) -> npt.NDArray[np.floating]: ...
def range_search(
    queries: npt.NDArray[np.floating],
    corpus: npt.NDArray[np.floating],
    threshold: float,
    mode: int,
    row_offset: int,
    col_offset: int,
    max_per_row: int,
    max_hits: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.floating], bool]: ...
def top_k_self(
    x: npt.NDArray[np.floating], k: int, exclude_self: bool
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.int64]]: ...
