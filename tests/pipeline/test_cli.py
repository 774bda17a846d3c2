"""The `mer` command as a user meets it: input errors are one line and exit code 2, no traceback."""

from __future__ import annotations

import sys

import pytest

from pipeline.cli import main


def test_wrong_root_is_one_line_and_exit_code_2(tmp_path, capsys):
    code = main(["prepare", "--corpus", "meld", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "nowhere" in err and "does not exist" in err
    assert not (tmp_path / "out").exists()


def test_tree_of_another_corpus_names_what_was_expected(tmp_path, capsys):
    (tmp_path / "tree").mkdir()  # beside the output: an --out inside the root is refused first
    code = main(["prepare", "--corpus", "iemocap", "--root", str(tmp_path / "tree"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Session" in err and "Traceback" not in err


def test_debug_flag_shows_the_exception(tmp_path):
    from pipeline.core.errors import PipelineError

    with pytest.raises(PipelineError):
        main(["--debug", "prepare", "--corpus", "meld", "--root", str(tmp_path / "x"), "--out", str(tmp_path / "o")])


def test_unknown_demo_params_key_is_rejected(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("demo:\n  seed: 0\n  sead: 1\n")
    assert main(["demo-corpus", str(tmp_path / "demo"), "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{params}:demo.sead: unknown key; known keys: " in err and "seed" in err
    assert not (tmp_path / "demo").exists()


def test_progress_bars_draw_on_a_terminal_and_stay_out_of_logs(monkeypatch):
    import io

    from pipeline.core.progress import progress

    items = [1, 2, 3]
    assert progress(items, "quiet") is items  # stderr is not a terminal under pytest: no bar at all

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress(items, "extract meld text", unit="batch")
    assert list(bar) == items
    assert "extract meld text" in terminal.getvalue() and "batch" in terminal.getvalue()


def test_an_unexpected_error_is_one_line_unless_debug(monkeypatch, capsys):
    import pipeline.cli as cli

    def boom(args):
        raise KeyError("something unforeseen")

    monkeypatch.setattr(cli, "_cmd_tiny_models", boom)  # the parser is built inside main(), with this
    assert main(["tiny-models", "x"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unexpected error: KeyError" in err and "--debug" in err
    with pytest.raises(KeyError):
        main(["tiny-models", "x", "--debug"])  # --debug also after the subcommand


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU: the error cannot occur")
def test_a_gpu_asked_for_on_a_machine_without_one_is_one_line(prepared_demo, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("extract:\n  text:\n    model: data/models/roberta-tiny\n    device: cuda\n")
    out = tmp_path / "store"
    code = main(["extract", "text", "--manifest", str(prepared_demo["meld"]), "--out", str(out), "--params", str(params)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "no usable CUDA GPU" in err and "set device: auto or cpu" in err
    assert not out.exists()
