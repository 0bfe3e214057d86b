"""What the command-line tests share: the flags of a tiny, quick training run and the check of a one-line error."""

TINY = ["--hidden", "16", "--z-dim", "2", "--epochs", "1", "--no-progress", "--device", "cpu", "--threads", "1"]
"""Train flags that make a run in a second: a 16-unit MLP, a 2-d latent, one epoch on the CPU."""


def one_line_error(capsys, command: str) -> str:
    """The error a failed ``pyrovae COMMAND`` wrote, checked to be one ``pyrovae COMMAND: error: ...`` line."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"pyrovae {command}: error: "), err
    return err
