"""Central finite differences in float64, for nano2_gradcheck, nano2_debug's check and the
tests: which entries to perturb, the differences themselves, and how close is close enough."""
import numpy as np

# A float64 loss carries ~1e-16 relative rounding; eps=1e-4 balances that (~1e-11 in the
# quotient) against the O(eps²) truncation error: on configs/tiny.json the worst tensor was at
# ~2e-8, against 2e-7 with eps=1e-5 and 7e-7 with 1e-3. A float32 backward's own rounding
# (~1e-7 per operation; the worst tensor measured ~3e-7) sets its bound.
TOLERANCE = {"float64": 1e-6, "float32": 1e-4}
EPS = 1e-4


def sample_entries(grad, n_samples, rng):
    """Flat indices: half the largest |grad| entries, half drawn at random from the rest."""
    flat = np.abs(grad.ravel())
    if flat.size <= n_samples:
        return np.arange(flat.size)
    largest = np.argsort(-flat, kind="stable")[:(n_samples + 1) // 2]
    rest = np.setdiff1d(np.arange(flat.size), largest)
    return np.concatenate([largest, rng.choice(rest, n_samples - largest.size, replace=False)])


def central_differences(loss, flat, entries, eps):
    """(loss(x + eps) - loss(x - eps)) / 2 eps for each entry of `flat` (a view of the tensor that
    loss() reads), perturbed one at a time and restored."""
    numeric = np.empty(len(entries))
    for n, j in enumerate(entries):
        saved = flat[j].item()
        flat[j] = saved + eps
        plus = float(loss())
        flat[j] = saved - eps
        minus = float(loss())
        flat[j] = saved
        numeric[n] = (plus - minus) / (2 * eps)
    return numeric


def checked_differences(loss, flat, entries, analytic, eps, tol):
    """(central differences at `entries`, their relative error against `analytic`), taken again
    at eps/10 where the error at eps is over tol: a difference that straddles a kink (ReLU²'s
    second derivative jumps at 0; configs/modded.json's FFN met one at 3e-6) is off by O(eps),
    which the smaller step shrinks tenfold or removes, while a wrong backward stays wrong."""
    numeric = central_differences(loss, flat, entries, eps)
    err = relative_error(analytic, numeric)
    if err > tol:
        finer = central_differences(loss, flat, entries, eps / 10)
        if relative_error(analytic, finer) < err:
            numeric, err = finer, relative_error(analytic, finer)
    return numeric, err


def relative_error(analytic, numeric):
    """||analytic - numeric|| / max(||analytic||, ||numeric||), 0 when both are 0."""
    scale = max(np.linalg.norm(analytic), np.linalg.norm(numeric))
    return 0.0 if scale == 0.0 else float(np.linalg.norm(analytic - numeric) / scale)
