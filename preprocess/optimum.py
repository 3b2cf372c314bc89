"""The best achievable forecast skill over persistence on the synthetic universe, from its own parameters.

The generator (preprocess/synthetic.py) is a linear-Gaussian state-space model in log price, per ticker:
    state     s_t = (f_t, d_t)              fair value, deviation
    f_t = f_{t-1} + fair_vol * eps_t        (+ overnight_vol * eps'_t at the first minute of a session)
    d_t = phi * d_{t-1} + deviation_vol * eta_t
    observed  p_t = f_t + d_t               (exactly: no observation noise)
The forecast of p_{e+h} with the least mean squared error given everything up to e is the Kalman
filter's: f^_e + phi^h d^_e. Its error variance follows from the Riccati recursion alone, so the optimum
is computed, not simulated:
    kalman   the filter on the whole past (all sessions), the best any forecaster can do;
    window   the least-squares (= conditional expectation, Gaussian) forecast from the window's own
             seq_len log prices relative to its last one: the best a model that sees one window can do.
Skill is 1 - MSE_forecast / MSE_persistence of the close in price units, pooled over tickers: a ticker
weighs with its squared price level (a price error is about price x log error), times its window count.

Approximations (each far below the 0.01 the tests allow): the CSV rounds prices to 4 decimals (at a
price of 10 that is a log error of 3e-6 against a 5-minute move of ~1e-3); E[exp(p)] is taken as
exp(E[p]) (the variance of the log forecast error is ~1e-6); missing minutes are ignored (0.2 % of
minutes); the generator's first minute of deviation is not exactly stationary (gone after ~20 minutes,
before the first target at minute seq_len + horizon - 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from preprocess.bars import SESSION_MINUTES

METHOD = ("kalman: steady-periodic Riccati recursion of the fair-value/deviation state (exact for the "
          "generator's linear-Gaussian process); window: population least squares of the horizon's log "
          "return on the window's log prices relative to its last close; skill pooled over tickers in "
          "price units, weights = window count x mean squared price")


@dataclass(frozen=True)
class TickerProcess:
    """One ticker's generating parameters (per-minute sds in log-price units)."""

    phi: float
    deviation_vol: float
    fair_vol: float
    overnight_vol: float

    def to_dict(self) -> dict:
        return asdict(self)


def _arrays(processes: list[TickerProcess]) -> tuple[np.ndarray, ...]:
    return tuple(np.array([getattr(p, k) for p in processes], np.float64)
                 for k in ("phi", "deviation_vol", "fair_vol", "overnight_vol"))


def persistence_variance(processes: list[TickerProcess], horizon: int) -> np.ndarray:
    """Var(p_{e+h} - p_e) per ticker: the persistence forecast's mean squared log error."""
    phi, dvol, fvol, _ = _arrays(processes)
    gamma0 = dvol ** 2 / (1 - phi ** 2)
    return (1 - phi ** horizon) ** 2 * gamma0 + _future_noise(phi, dvol, fvol, horizon)


def _future_noise(phi, dvol, fvol, horizon):
    # The part of p_{e+h} that no forecast made at e can know: innovations after e.
    return horizon * fvol ** 2 + dvol ** 2 * (1 - phi ** (2 * horizon)) / (1 - phi ** 2)


def window_ends(seq_len: int, horizon: int) -> np.ndarray:
    """Session minutes e at which a window ends (the forecast origins)."""
    return np.arange(seq_len - 1, SESSION_MINUTES - horizon)


def kalman_variance(processes: list[TickerProcess], horizon: int, seq_len: int,
                    warm_sessions: int = 4) -> np.ndarray:
    """Mean over window ends of the Kalman forecast's mean squared log error, per ticker.

    The recursion runs `warm_sessions` sessions from a flat prior on f (far more than it needs to become
    periodic: the overnight gap resets f's uncertainty the same way every session), then one more whose
    per-minute variances are used.
    """
    phi, dvol, fvol, ovol = _arrays(processes)
    n = len(phi)
    gamma0 = dvol ** 2 / (1 - phi ** 2)
    # P = [[a, b], [b, c]] per ticker: the filtered covariance of (f - f^, d - d^).
    a, b, c = np.ones(n), np.zeros(n), gamma0.copy()  # sd 1 in log price: flat against ~1e-3 moves
    ends = window_ends(seq_len, horizon)
    out = np.zeros(n)
    for session in range(warm_sessions + 1):
        for minute in range(SESSION_MINUTES):
            # predict: A = diag(1, phi), Q = diag(fvol^2 (+ ovol^2 at the open), dvol^2)
            a = a + fvol ** 2 + (ovol ** 2 if minute == 0 else 0.0)
            b = phi * b
            c = phi ** 2 * c + dvol ** 2
            # update on p = f + d exactly (H = [1, 1], R = 0)
            # P - P H' H P / s simplifies to (det P / s) [[1, -1], [-1, 1]]: f's error is -d's error
            post = (a * c - b * b) / (a + 2 * b + c)
            a, b, c = post, -post, post
            if session == warm_sessions and ends[0] <= minute <= ends[-1]:
                # error of f^ + phi^h d^: (f - f^) + phi^h (d - d^)
                w = phi ** horizon
                out += a + 2 * w * b + w * w * c
    return out / len(ends) + _future_noise(phi, dvol, fvol, horizon)


def window_forecast(processes: list[TickerProcess], horizon: int, seq_len: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The best linear forecast from one window, per ticker: (coefficients, mean squared log error).

    Regressors u_k = p_{e-k} - p_e for k = seq_len-1 .. 1 (oldest first, as in a window), target
    u = p_{e+h} - p_e, forecast = coefficients @ u; within a session f has independent increments and d
    is stationary, so the covariances are exact and the same for every e. Coefficients: (n, seq_len-1).
    """
    phi, dvol, fvol, _ = _arrays(processes)
    lags = np.concatenate([-np.arange(seq_len - 1, 0, -1), [horizon]]).astype(np.float64)  # offsets from e
    la, lb = lags[:, None], lags[None, :]
    same_side = np.sign(la) == np.sign(lb)
    overlap = np.where(same_side, np.minimum(np.abs(la), np.abs(lb)), 0.0)
    coefficients, mse = np.empty((len(phi), seq_len - 1)), np.empty(len(phi))
    for i in range(len(phi)):
        def gamma(k, p=phi[i], v=dvol[i]):  # autocovariance of d at lag k
            return v ** 2 / (1 - p ** 2) * p ** np.abs(k)

        cov = fvol[i] ** 2 * overlap + gamma(la - lb) - gamma(la) - gamma(lb) + gamma(0)
        sxx, sxy, syy = cov[:-1, :-1], cov[:-1, -1], cov[-1, -1]
        coefficients[i] = np.linalg.solve(sxx, sxy)
        mse[i] = syy - sxy @ coefficients[i]
    return coefficients, mse


def window_variance(processes: list[TickerProcess], horizon: int, seq_len: int) -> np.ndarray:
    """Mean squared log error of the best linear forecast from one window, per ticker."""
    return window_forecast(processes, horizon, seq_len)[1]


def pooled_skill(forecast_mse: np.ndarray, persistence_mse: np.ndarray, weights: np.ndarray) -> float:
    """1 - sum w * mse / sum w * persistence mse (price units when w = squared price x windows)."""
    weights = np.asarray(weights, np.float64)
    return float(1 - np.sum(weights * forecast_mse) / np.sum(weights * persistence_mse))


def optimum(processes: list[TickerProcess], weights: np.ndarray, horizon: int, seq_len: int) -> dict:
    """The optimum record: kalman and window skill (pooled), horizon, seq_len, method."""
    persistence = persistence_variance(processes, horizon)
    return {
        "kalman_skill": round(pooled_skill(kalman_variance(processes, horizon, seq_len), persistence,
                                           weights), 6),
        "window_skill": round(pooled_skill(window_variance(processes, horizon, seq_len), persistence,
                                           weights), 6),
        "horizon": int(horizon),
        "seq_len": int(seq_len),
        "method": METHOD,
    }
