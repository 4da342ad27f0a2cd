"""Independent pure-NumPy Box3D oracle (physics.md section 2), for tests only.

Written separately from the C++ core on purpose: the parity tests compare the two.
Vectorised over cells; slow but simple.
"""
import numpy as np
from scipy.integrate import lebedev_rule

METRIC = np.array([-1.0, 1.0, 1.0, 1.0])
PAIRS = ((0, 1), (0, 2), (1, 2))


def minkowski_dot(a, b):
    return np.einsum("...m,...m->...", a * METRIC, b)


def boost_to_rest(F, u):
    """Pure boost of four-vectors F[..., 4] into the frame where u = (1,0,0,0)."""
    W = u[..., 0]
    v = u[..., 1:] / W[..., None]
    v2 = np.sum(v * v, axis=-1)
    out = np.empty_like(F)
    vF = np.einsum("...i,...i->...", v, F[..., 1:])
    out[..., 0] = W * (F[..., 0] - vF)
    safe = np.where(v2 > 0, v2, 1.0)
    coef = np.where(v2 > 0, (W - 1.0) * vF / safe, 0.0) - W * F[..., 0]
    out[..., 1:] = F[..., 1:] + coef[..., None] * v
    return out


def boost_from_rest(F, u):
    ui = u.copy()
    ui[..., 1:] = -ui[..., 1:]
    return boost_to_rest(F, ui)


def inverse_langevin_exact(f):
    f = np.asarray(f, dtype=float)
    Z = np.zeros_like(f)
    # bisection for robustness then Newton polish
    lo = np.zeros_like(f)
    hi = np.full_like(f, 1000.0)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            L = np.where(mid > 1e-4, 1.0 / np.tanh(mid) - 1.0 / mid, mid / 3.0 - mid**3 / 45.0)
        lo = np.where(L < f, mid, lo)
        hi = np.where(L >= f, mid, hi)
    Z = 0.5 * (lo + hi)
    return np.where(f > 0, Z, 0.0)


def inverse_langevin_jedynak(f):
    # Jedynak's rational approximation (the Rhea code's choice); reference cases pin the coefficients.
    f = np.asarray(f, dtype=float)
    numerator = 3.0 - 1.00651 * f**2 - 0.962251 * f**4 + 1.47353 * f**6 - 0.48953 * f**8
    return f * numerator / ((1.0 - f) * (1.0 + 1.01524 * f))


def species_distributions(Fn, order=17, z_method="exact"):
    """Max-entropy angular distributions g [C, 6, Q] (per steradian) of normalised rest-frame cells
    Fn [C, 6, 4] on the Lebedev points dirs [Q, 3] with weights w [Q] (summing to 4 pi)."""
    x, w = lebedev_rule(order)
    dirs = x.T  # (Q, 3)
    n = Fn[:, :, 0]
    fl = Fn[:, :, 1:]
    fmag = np.linalg.norm(fl, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ff = np.where(n > 0, fmag / np.where(n > 0, n, 1), 0.0)
        fhat = np.where(fmag[..., None] > 0, fl / np.where(fmag > 0, fmag, 1)[..., None], 0.0)
    Z = inverse_langevin_exact(ff) if z_method == "exact" else inverse_langevin_jedynak(ff)
    mu = np.einsum("csi,qi->csq", fhat, dirs)
    Zq = Z[..., None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        big = 2 * Zq / (-np.expm1(-2 * Zq)) * np.exp(Zq * (mu - 1))
    small = 1 + Zq * mu
    shape = np.where(Zq > 1e-8, big, small)
    g = n[..., None] / (4 * np.pi) * shape  # (C, 6, Q)
    return g, dirs, w


# A lobe of G counts only above this fraction of the pair's n_i + nbar_i + n_j + nbar_j: below it G is
# rounding noise (the C++ core's kLobeNoise, cpp/src/box3d/box3d.hpp; written out here, not imported,
# as the oracle is an independent implementation).
LOBE_NOISE = 1e-12
# A moving cell's bound grows with the boost's rounding, W^2 eps of the densities (kBoostLobeNoise).
BOOST_LOBE_NOISE = 8 * np.finfo(float).eps


def pair_lobes(G, w, Fn, i, j, W=None):
    """I+ and I- of a pair's G [C, Q], each zeroed where it is at most max(LOBE_NOISE, BOOST_LOBE_NOISE
    W^2) x the pair's scale (W: the cells' boost factors, None at rest)."""
    n = np.asarray(Fn, float)[:, :, 0]
    fraction = LOBE_NOISE if W is None else np.maximum(LOBE_NOISE, BOOST_LOBE_NOISE * np.asarray(W) ** 2)
    noise = fraction * ((n[:, i] + n[:, i + 3]) + (n[:, j] + n[:, j + 3]))
    Ip = np.sum(np.maximum(G, 0) * w, axis=1)
    Im = np.sum(np.maximum(-G, 0) * w, axis=1)
    return np.where(Ip > noise, Ip, 0.0), np.where(Im > noise, Im, 0.0)


def crossing_features_oracle(Fn, order=17):
    """The 18 ELN-crossing inputs of normalised rest-frame cells Fn [C, 6, 4], per pair (e,mu),
    (e,tau), (mu,tau): I+, I-, solid-angle fraction with G > 0, |<n>+|, |<n>-|, cosine between them."""
    g, dirs, w = species_distributions(np.asarray(Fn, float), order)
    eln = g[:, :3] - g[:, 3:]
    out = []
    for (i, j) in PAIRS:
        G = eln[:, i] - eln[:, j]
        Ip, Im = pair_lobes(G, w, Fn, i, j)
        up = np.maximum(G, 0) * w * (Ip > 0)[:, None]  # an empty lobe (noise) has no shape
        down = np.maximum(-G, 0) * w * (Im > 0)[:, None]
        centre_up, centre_down = up @ dirs, down @ dirs
        length_up, length_down = np.linalg.norm(centre_up, axis=1), np.linalg.norm(centre_down, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out += [Ip, Im, np.where(Ip > 0, ((G > 0) * w).sum(1), 0.0) / (4 * np.pi),
                    np.where(Ip > 0, length_up / np.where(Ip > 0, Ip, 1), 0.0),
                    np.where(Im > 0, length_down / np.where(Im > 0, Im, 1), 0.0),
                    np.where(length_up * length_down > 0,
                             np.einsum("ci,ci->c", centre_up, centre_down) / (length_up * length_down), 0.0)]
    return np.stack(out, axis=1)


def box3d(F_init, u=None, order=17, z_method="exact"):
    F_init = np.asarray(F_init, dtype=float)
    batch = F_init.shape[:-2]
    F = F_init.reshape(-1, 6, 4)
    if u is None:
        u = np.zeros(F.shape[:1] + (4,))
        u[:, 0] = 1
    u = np.broadcast_to(np.asarray(u, float), batch + (4,)).reshape(-1, 4)
    Frest = boost_to_rest(F, u[:, None, :])
    ntot = Frest[:, :, 0].sum(axis=1)
    Fn = Frest / ntot[:, None, None]
    g, dirs, w = species_distributions(Fn, order, z_method)
    eln = g[:, :3] - g[:, 3:]
    C, Q = g.shape[0], g.shape[2]
    M = np.zeros((C, Q, 3, 3))
    k = np.zeros(C)
    growth = np.zeros(C)
    Ps = []
    for (i, j) in PAIRS:
        G = eln[:, i] - eln[:, j]
        Ip, Im = pair_lobes(G, w, Fn, i, j, W=u[:, 0])
        growth = np.maximum(growth, np.sqrt(Ip * Im))
        cross = (Ip > 0) & (Im > 0)
        Ismall = np.minimum(Ip, Im)
        Ilarge = np.maximum(Ip, Im)
        with np.errstate(divide="ignore", invalid="ignore"):
            Plarge = np.where(cross, 1 - (2.0 / 3.0) * Ismall / np.where(Ilarge > 0, Ilarge, 1), 1.0)
        pos_small = Ip <= Im  # positive side is the smaller one (tie: both 1/3 anyway)
        on_pos = G > 0
        on_neg = G < 0
        small_side = np.where(pos_small[:, None], on_pos, on_neg)
        large_side = np.where(pos_small[:, None], on_neg, on_pos)
        P = np.where(small_side, 1.0 / 3.0, np.where(large_side, Plarge[:, None], 0.5 * (1.0 / 3.0 + Plarge[:, None])))
        P = np.where(cross[:, None], P, 1.0)
        Ps.append((i, j, P, cross))
        k += cross
    kk = np.where(k > 0, k, 1)
    for (i, j, P, cross) in Ps:
        Mij = np.where(cross[:, None], (1 - P) / kk[:, None], 0.0)
        M[:, :, i, j] = Mij
        M[:, :, j, i] = Mij
    for i in range(3):
        M[:, :, i, i] = 1 - M[:, :, i, :].sum(axis=-1) + M[:, :, i, i]
    Mm = M - np.eye(3)
    dF = np.zeros_like(Fn)
    comp = np.concatenate([np.ones((Q, 1)), dirs], axis=1)  # (Q, 4)
    for s in range(2):
        gs = g[:, 3 * s:3 * s + 3]  # (C, 3, Q)
        dg = np.einsum("cqij,cjq->ciq", Mm, gs)
        dF[:, 3 * s:3 * s + 3] = np.einsum("ciq,q,qm->cim", dg, w, comp)
    dF_lab = boost_from_rest(dF * ntot[:, None, None], u[:, None, :])
    F_box = F + dF_lab
    return F_box.reshape(batch + (6, 4)), growth.reshape(batch)
