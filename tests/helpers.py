"""Central finite differences in float64, shared by the gradient tests: the same
central_differences and relative_error that nano2_gradcheck uses."""
import numpy as np

from train.gradcheck import central_differences, relative_error

EPS = 1e-5
TOLERANCE = 1e-6


def numeric_grad(f, x, eps=EPS):
    """d f() / d x by central differences over every entry, perturbing `x` in place."""
    return central_differences(f, x.reshape(-1), range(x.size), eps).reshape(x.shape)


def assert_grad_close(analytic, f, x, name="", tol=TOLERANCE):
    numeric = numeric_grad(f, x)
    err = relative_error(np.asarray(analytic, dtype=np.float64), numeric)
    assert np.linalg.norm(numeric) > 0, f"{name}: the numeric gradient is zero, so the check says nothing"
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:g}"
    return err
