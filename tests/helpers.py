"""Central finite differences in float64, shared by the gradient tests."""
import numpy as np

EPS = 1e-5
TOLERANCE = 1e-6


def numeric_grad(f, x, eps=EPS):
    """d f() / d x by central differences, perturbing `x` in place one entry at a time."""
    grad = np.zeros_like(x, dtype=np.float64)
    flat, grad_flat = x.reshape(-1), grad.reshape(-1)
    for j in range(flat.size):
        saved = flat[j]
        flat[j] = saved + eps
        plus = float(f())
        flat[j] = saved - eps
        minus = float(f())
        flat[j] = saved
        grad_flat[j] = (plus - minus) / (2 * eps)
    return grad


def relative_error(analytic, numeric):
    """||analytic - numeric|| / max(||analytic||, ||numeric||), 0 when both are 0."""
    scale = max(np.linalg.norm(analytic), np.linalg.norm(numeric))
    return 0.0 if scale == 0 else float(np.linalg.norm(analytic - numeric) / scale)


def assert_grad_close(analytic, f, x, name="", tol=TOLERANCE):
    numeric = numeric_grad(f, x)
    err = relative_error(np.asarray(analytic, dtype=np.float64), numeric)
    assert np.linalg.norm(numeric) > 0, f"{name}: the numeric gradient is zero, so the check says nothing"
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:g}"
    return err
