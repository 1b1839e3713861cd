"""`make demo`'s hardware path in its quick mode: the e2m1 digits CNN fitted to xc7z020, built as
an hls4ml project and verified bit for bit (the sweep part is tested in test_sweep.py)."""


def test_demo_quick(load_script, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)          # the demo writes out/ under the working directory
    demo = load_script("examples/demo.py")
    assert demo.main(quick=True, sweep=False) == 0
    out = capsys.readouterr().out
    assert "fit to xc7z020 at 80%" in out and "fpq.verify: EXACT" in out
