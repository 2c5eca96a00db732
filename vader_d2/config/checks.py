"""
One-line checks of config values, shared by ``vader_d2/config/config.py`` and each method's checks
(``check_ranges`` / ``check_config`` of the classes in ``vader_d2/modeling``). Each names the key, the
value and what is allowed. This module imports nothing of the package but its error, so that the
methods' modules and the config module can both use it.
"""

import signal

from detectron2.layers import get_norm

from ..errors import UserError

__all__ = ["require", "at_least", "probability", "ordered_pair", "check_norm", "parse_signal_names"]


def require(ok, key, value, allowed):
    if not ok:
        raise UserError(f"{key} must be {allowed}, got {value!r}")


def at_least(cfg_node, prefix, key, minimum):
    value = cfg_node[key]
    require(isinstance(value, (int, float)) and value >= minimum, f"{prefix}.{key}", value, f"at least {minimum}")


def probability(cfg_node, prefix, key):
    value = cfg_node[key]
    require(0.0 <= value <= 1.0, f"{prefix}.{key}", value, "a probability in [0, 1]")


def ordered_pair(cfg_node, prefix, key, minimum, strict_minimum):
    value = tuple(cfg_node[key])
    lo_ok = len(value) == 2 and (value[0] > minimum if strict_minimum else value[0] >= minimum)
    require(
        lo_ok and value[0] <= value[1], f"{prefix}.{key}", value,
        f"two values ({'>' if strict_minimum else '>='} {minimum}) min <= max",
    )


def check_norm(norm, channels, norm_key, channels_key):
    """Detectron2 can build the norm ``norm`` over ``channels`` channels (GN needs a multiple of its groups)."""
    try:
        get_norm(norm, channels)
    except (KeyError, ValueError) as e:
        raise UserError(
            f"{norm_key}={norm!r} cannot normalise {channels_key}={channels} channels "
            f"({type(e).__name__}: {e}); use 'GN' with a multiple of 32 channels, 'BN' or ''"
        ) from None


# Signals that cannot be caught, or that report a fault, a child's end or a closed pipe rather than a
# request to stop: noting them and training on would hide the fault or stop for no reason.
_NOT_STOP_REQUESTS = ("SIGKILL", "SIGSTOP", "SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGABRT", "SIGTRAP", "SIGCHLD", "SIGPIPE", "SIGXFSZ")


def parse_signal_names(names, key="SOLVER.PREEMPTION_SIGNALS"):
    """The signals named in ``names`` (e.g. ``["SIGTERM", "SIGUSR1"]``; empty: none), or a one-line UserError."""
    if isinstance(names, str) or not all(isinstance(name, str) for name in names):
        raise UserError(f"{key} must be a list of signal names such as ['SIGTERM', 'SIGUSR1'] ([] for none), got {names!r}")
    signals = []
    for name in names:
        try:
            sig = signal.Signals[name]
        except KeyError:
            raise UserError(
                f"{key}: {name!r} is not a signal name on this system; use names such as 'SIGTERM' and 'SIGUSR1' "
                "(the ones `kill -l` lists, with the SIG prefix)"
            ) from None
        if sig.name in _NOT_STOP_REQUESTS:
            raise UserError(
                f"{key}: {name} cannot be used: it cannot be caught, or it reports a fault or an event rather than "
                "a request to stop; use SIGTERM, SIGUSR1, SIGUSR2, SIGINT or SIGHUP"
            )
        if sig not in signals:
            signals.append(sig)
    return tuple(signals)
