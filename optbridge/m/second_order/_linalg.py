"""Dense solves with fallbacks, conjugate gradient, and the randomized Nyström approximation."""

from __future__ import annotations

import torch

FALLBACKS = ("abs", "lu", "lstsq")


def _eye_like(H: torch.Tensor) -> torch.Tensor:
    return torch.eye(H.shape[0], dtype=H.dtype, device=H.device)


def _pinv_eig(Q: torch.Tensor, L: torch.Tensor) -> dict:
    """Factor ``Q diag(1/L) Q^T`` where eigenvalues within rounding of zero are dropped."""
    tol = L.abs().max() * L.shape[0] * torch.finfo(L.dtype).eps
    ok = (L.abs() > tol) & torch.isfinite(L)
    inv = torch.where(ok, 1.0 / torch.where(ok, L, torch.ones_like(L)), torch.zeros_like(L))
    return {"mode": "eig", "Q": Q, "inv": inv}


def _abs_eig(H: torch.Tensor) -> dict:
    try:
        L, Q = torch.linalg.eigh(H)
    except RuntimeError:  # eigh did not converge
        return {"mode": "lstsq", "H": H}
    return _pinv_eig(Q, L.abs())


def _numerically_singular(pivots: torch.Tensor) -> bool:
    """Whether factorization pivots (``L_ii²`` or ``|U_ii|``) reveal a numerically singular
    matrix: the smallest is within ``n·eps`` of the largest."""
    n = pivots.numel()
    return bool(pivots.min() <= pivots.max() * n * torch.finfo(pivots.dtype).eps)


def factorize(H: torch.Tensor, *, eigval_fn=None, use_lstsq: bool = False, fallback: str = "abs",
              precompute_inverse: bool = False) -> dict:
    """A factorization of the symmetric ``H`` that :func:`apply_factor` solves with.

    Order: ``eigval_fn`` given → eigendecomposition with ``eigval_fn`` applied to the eigenvalues
    (zero results dropped); ``use_lstsq`` → least squares; otherwise Cholesky, and when ``H`` is
    not positive definite (Cholesky fails, or its pivots show ``H`` numerically singular) the
    ``fallback``: ``"abs"`` eigendecomposition with absolute
    eigenvalues (saddle-free Newton; eigenvalues within rounding of zero are dropped, a
    pseudo-inverse), ``"lu"`` LU (exact solve, which may head for a saddle point; least squares if
    singular), ``"lstsq"`` least squares. A non-finite ``H`` gives ``{"mode": "identity"}``.
    """
    if not bool(torch.isfinite(H).all()):
        return {"mode": "identity"}
    if eigval_fn is not None:
        try:
            L, Q = torch.linalg.eigh(H)
        except RuntimeError:
            f = {"mode": "lstsq", "H": H}
        else:
            f = _pinv_eig(Q, eigval_fn(L))
    elif use_lstsq:
        f = {"mode": "lstsq", "H": H}
    else:
        C, info = torch.linalg.cholesky_ex(H)
        if int(info) == 0 and not _numerically_singular(C.diagonal().square()):
            f = {"mode": "cholesky", "L": C}
        elif fallback == "abs":
            f = _abs_eig(H)
        elif fallback == "lu":
            LU, piv, info = torch.linalg.lu_factor_ex(H)
            ok = int(info) == 0 and not _numerically_singular(LU.diagonal().abs())
            f = {"mode": "lu", "LU": LU, "piv": piv} if ok else {"mode": "lstsq", "H": H}
        else:
            f = {"mode": "lstsq", "H": H}
    if precompute_inverse and f["mode"] != "identity":
        f = {"mode": "inverse", "Hinv": apply_factor(f, _eye_like(H)), "n": H.shape[0]}
    return f


def apply_factor(f: dict, b: torch.Tensor) -> torch.Tensor:
    """Solve with a factorization from :func:`factorize`; ``b`` is (n,) or (n, k)."""
    mode = f["mode"]
    vec = b.ndim == 1
    B = b.unsqueeze(-1) if vec else b
    if mode == "cholesky":
        X = torch.cholesky_solve(B, f["L"])
    elif mode == "eig":
        Q = f["Q"]
        X = Q @ (f["inv"].unsqueeze(-1) * (Q.T @ B))
    elif mode == "lu":
        X = torch.linalg.lu_solve(f["LU"], f["piv"], B)
    elif mode == "lstsq":
        H = f["H"]
        driver = "gelsd" if H.device.type == "cpu" else None
        X = torch.linalg.lstsq(H, B, driver=driver).solution
    elif mode == "inverse":
        X = f["Hinv"] @ B
    else:  # identity
        X = B.clone()
    return X.squeeze(-1) if vec else X


def solve(H: torch.Tensor, b: torch.Tensor, **kw) -> tuple[torch.Tensor, dict]:
    """Solve ``H x = b`` (see :func:`factorize`); a non-finite solution from an exact solver is
    redone with the ``"abs"`` pseudo-inverse, so the result is finite when ``H`` and ``b`` are."""
    f = factorize(H, **kw)
    x = apply_factor(f, b)
    if f["mode"] in ("cholesky", "lu", "lstsq", "inverse") and not bool(torch.isfinite(x).all()):
        f = _abs_eig(H)
        x = apply_factor(f, b)
    return x, f


def cg(matvec, b: torch.Tensor, *, x0: torch.Tensor | None = None, tol: float = 1e-8,
       maxiter: int | None = None, reg: float = 0.0, precond=None, npc_terminate: bool = True):
    """(Preconditioned) conjugate gradient for ``(A + reg I) x = b``; returns ``(x, iterations)``.

    Stops when ``‖r‖ ≤ tol ‖b‖`` or after ``maxiter`` iterations (default ``b.numel()``). With
    ``npc_terminate``, a direction of non-positive curvature ``pᵀ(A + reg I)p ≤ 0`` stops the
    solve: the current iterate is returned, or ``b`` itself (steepest descent) if there is none
    yet (Nocedal & Wright, Algorithm 7.1).
    """
    n = b.numel()
    maxiter = n if maxiter is None else maxiter
    bnorm = torch.linalg.vector_norm(b)
    if float(bnorm) == 0.0:
        return torch.zeros_like(b), 0
    if x0 is None:
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        x = x0.clone()
        r = b - matvec(x)
        if reg:
            r.sub_(x, alpha=reg)
    threshold = tol * bnorm
    if float(torch.linalg.vector_norm(r)) <= float(threshold):
        return x, 0
    z = precond(r) if precond is not None else r
    p = z.clone()
    rz = torch.dot(r, z)
    started = x0 is not None
    it = 0
    while it < maxiter:
        Ap = matvec(p)
        if reg:
            Ap.add_(p, alpha=reg)
        curv = torch.dot(p, Ap)
        it += 1
        c = float(curv)
        if npc_terminate and c <= 0:
            return (x if started else b.clone()), it
        if c == 0:
            break
        alpha = rz / curv
        x.add_(alpha * p)
        r.sub_(alpha * Ap)
        started = True
        if float(torch.linalg.vector_norm(r)) <= float(threshold):
            break
        z = precond(r) if precond is not None else r
        rz_new = torch.dot(r, z)
        p.mul_(rz_new / rz).add_(z)
        rz = rz_new
    return x, it


def nystrom(matmat, n: int, rank: int, gen: torch.Generator, dtype, device):
    """Randomized Nyström approximation ``A ≈ U diag(lam) Uᵀ`` of a symmetric ``A`` from ``rank``
    products (Frangella, Tropp & Udell, 2023, Algorithm 2.1, https://arxiv.org/abs/2110.02820).

    ``matmat(Omega)`` returns ``A`` applied to the rows of ``Omega`` (rank, n). Test matrix: a
    Gaussian (n, rank) draw from ``gen``, orthonormalised. Stabilising shift
    ``ν = √n·eps·‖Y‖_F`` (the paper uses the spectral norm; Frobenius is a cheap upper bound). When the shifted core ``Ωᵀ(AΩ + νΩ)`` is
    not positive definite (``A`` indefinite), its positive eigenvalues are used instead of the
    Cholesky factor, so the approximation stays positive semidefinite.
    """
    omega = torch.randn((n, rank), generator=gen, dtype=dtype, device=device)
    omega, _ = torch.linalg.qr(omega)
    Y = matmat(omega.T).T  # (n, rank)
    nu = (n**0.5) * torch.finfo(dtype).eps * torch.linalg.matrix_norm(Y)
    Y.add_(omega * nu)
    core = omega.T @ Y
    core = (core + core.T) / 2
    C, info = torch.linalg.cholesky_ex(core)
    if int(info) == 0:
        B = torch.linalg.solve_triangular(C, Y.T, upper=False).T
    else:
        mu, V = torch.linalg.eigh(core)
        keep = mu > mu.abs().max() * rank * torch.finfo(dtype).eps
        B = Y @ (V[:, keep] / mu[keep].sqrt())
    U, S, _ = torch.linalg.svd(B, full_matrices=False)
    lam = (S.square() - nu).clamp_(min=0)
    return U, lam
