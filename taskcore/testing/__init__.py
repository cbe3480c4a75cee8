"""Helpers for tests that run the real parts: Redis servers, workers, signals."""


def default_interrupt_handling() -> None:
    """``preexec_fn`` for a child the test will send SIGINT (Ctrl-C) to.

    A process started in the background by a non-interactive shell (``cmd &``,
    ``nohup``) inherits SIGINT *ignored*, and so would the child: Python would
    never raise KeyboardInterrupt and bash cannot even trap it. Reset it to the
    default, as in a terminal.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
