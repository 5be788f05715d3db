"""The progress display: a bar on a terminal, periodic lines elsewhere, a final line always."""
import io

from cw.client.progress import Progress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_not_a_tty_prints_a_line_every_interval_and_a_final_one():
    out, clock = io.StringIO(), Clock()
    bar = Progress(100, stream=out, interval=10, clock=clock)
    for _ in range(40):
        clock.now += 0.5  # 2 jobs/s
        bar.update()
    bar.close()
    bar.close()  # once only
    lines = out.getvalue().splitlines()
    assert lines == ["cw: 20/100 (20%) done, 2.0/s, ETA 0:40",
                     "cw: 40/100 (40%) done, 2.0/s, ETA 0:30",
                     "cw: 40/100 done in 0:20 (2.0/s)"]


def test_a_tty_gets_a_bar_redrawn_in_place():
    out, clock = Tty(), Clock()
    with Progress(4, stream=out, clock=clock) as bar:
        for _ in range(4):
            clock.now += 1
            bar.update()
    text = out.getvalue()
    assert "\n" not in text.rstrip("\n") and text.count("\r") == 5
    assert "cw [##########----------] 2/4  50% 1.0/s ETA 0:02" in text
    assert text.endswith("cw: 4/4 done in 0:04 (1.0/s)\x1b[K\n")


def test_unknown_and_growing_totals():
    out, clock = io.StringIO(), Clock()
    bar = Progress(stream=out, interval=1, clock=clock)
    clock.now += 2
    bar.update(4)
    bar.add(10)
    clock.now += 2
    bar.update(1)
    bar.close()
    assert out.getvalue().splitlines() == ["cw: 4 done, 2.0/s", "cw: 5/10 (50%) done, 1.2/s, ETA 0:04",
                                           "cw: 5/10 done in 0:04 (1.2/s)"]
