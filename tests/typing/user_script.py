"""A user script that mypy --strict must accept against the installed package (.ci/run).

It calls every public function the way the README does; it is checked, not run by pytest."""

import numpy as np
import fastsim

a = np.random.rand(10, 4).astype(np.float32)
s = fastsim.cosine_similarity_matrix(a, a)
r = fastsim.cosine_similarity_rows(a, a)
p = fastsim.cosine_similarity(a[0], a[1])
sc, ix = fastsim.top_k(a, a, k=2)
c = fastsim.modified_triplet_loss(a, a)
g1, g2 = fastsim.modified_triplet_loss_grad(a, a)
hn = fastsim.hard_negatives(s)
t = fastsim.triplet_loss(a, a, a)
lstm = fastsim.LSTM(4, 3)
out, (h, cc) = lstm(a[None])
gru = fastsim.GRU(4, 3)
o2, h2 = gru(a[None])
rnn = fastsim.RNN(4, 3)
o3, h3 = rnn(a[None])
o4, (h4, c4) = fastsim.lstm_forward(a[None], np.zeros((12, 4)), np.zeros((12, 3)))
o5, h5 = fastsim.gru_forward(a[None], np.zeros((9, 4)), np.zeros((9, 3)))
o6, h6 = fastsim.rnn_forward(a[None], np.zeros((3, 4)), np.zeros((3, 3)))
vocab = fastsim.Vocabulary.build(["a b", "c"])
ids, lengths = vocab.encode(["a b"])
enc = fastsim.SiameseEncoder(np.zeros((len(vocab), 4), np.float32), lstm)
v = enc.encode(ids)
d = fastsim.is_duplicate(v, v, 0.5)
acc = fastsim.accuracy(v, v, np.array([1]), 0.5)
sim = fastsim.similarity(v, v)
info = fastsim.info()
fastsim.set_num_threads(2)
n = fastsim.get_num_threads()
lv = fastsim.simd_levels()
be = fastsim.available_backends()
