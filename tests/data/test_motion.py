"""Motion tasks: H3.6M loader on generated files, CMU loader on the real files, MPJPE protocol."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from PIL import Image

from pyro_dvae.data import motion
from pyro_dvae.data.skeleton import Skeleton

SUBJECTS = (1, 5, 6, 7, 8, 9, 11)
ACTIONS = ("walking", "eating")


def raw_frames(subject: int, action: int, sub: int) -> int:
    """Frames of a generated file: 239 to 359, so ceil(N / 2) >= 113 (64 validation starts)."""
    return 225 + 11 * subject + 7 * action + 3 * sub


def windows(n: int, seq_len: int = 50, skip: int = 2) -> int:
    return (n - seq_len) // skip + 1 if n >= seq_len else 0


@pytest.fixture(scope="module")
def h36m_root(tmp_path_factory) -> Path:
    """``h36m/S{s}/{action}_{1,2}.txt``, 99 columns: random root columns 0-5 (large) and joints."""
    root = tmp_path_factory.mktemp("h36m_root")
    rng = np.random.default_rng(0)
    for s in SUBJECTS:
        (root / "h36m" / f"S{s}").mkdir(parents=True)
        for a, action in enumerate(ACTIONS):
            for sub in (1, 2):
                data = rng.uniform(-0.5, 0.5, (raw_frames(s, a, sub), 99))
                data[:, :3] *= 1000
                np.savetxt(root / "h36m" / f"S{s}" / f"{action}_{sub}.txt", data, delimiter=",")
    return root


def build_h36m(h36m_root: Path, data_root: Path, **options) -> motion.MotionTask:
    return motion.build_h36m(
        root=str(h36m_root),
        actions=list(ACTIONS),
        skeleton=str(data_root / "skeletons" / "h36m_32.json"),
        **options,
    )


@pytest.fixture(scope="module")
def h36m_task(h36m_root, data_root) -> motion.MotionTask:
    return build_h36m(h36m_root, data_root)


def test_find_indices_by_hand():
    # n = 150: 101 starts, stride 101 // 64 + 1 = 2 -> 0, 2, ..., 100 (51), then 1, 3, ..., 25 (13)
    assert motion.find_indices(150, 50, 64) == sorted([*range(0, 101, 2), *range(1, 26, 2)])
    # n = 200: 151 starts, stride 3 -> 0, 3, ..., 150 (51), then the 13 smallest non-multiples of 3
    extra = [1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16, 17, 19]
    assert motion.find_indices(200, 50, 64) == sorted([*range(0, 151, 3), *extra])
    assert motion.find_indices(113, 50, 64) == list(range(64))
    assert motion.find_indices(100, 50, 64) == list(range(51))  # fewer starts than asked
    assert motion.window_starts(55, 50, 2) == [0, 2, 4]


def test_h36m_window_counts(h36m_task):
    n = {
        s: [math.ceil(raw_frames(s, a, sub) / 2) for a in range(2) for sub in (1, 2)]
        for s in SUBJECTS
    }
    assert len(h36m_task.train) == sum(windows(k) for s in (1, 6, 7, 8, 9) for k in n[s])
    assert len(h36m_task.val) == 64 * 4
    assert len(h36m_task.test) == sum(windows(k) for k in n[11])
    assert h36m_task.x_dim == 96 and h36m_task.modality == "motion"
    assert set(h36m_task.test.actions) == set(ACTIONS)
    # validation windows of S5/walking_1 start where find_indices says
    val_starts = [
        int(name.split("@")[1]) for name in h36m_task.val.names if name.startswith("S5/walking_1@")
    ]
    assert val_starts == motion.find_indices(n[5][0], 50, 64)


def test_h36m_values_in_metres_root_columns_ignored(h36m_task, h36m_root, data_root):
    skeleton = Skeleton.from_json(data_root / "skeletons" / "h36m_32.json")
    data = np.loadtxt(h36m_root / "h36m" / "S1" / "walking_1.txt", delimiter=",")[::2]
    data[:, :6] = 0
    expected = skeleton.forward_kinematics(torch.from_numpy(data[2:52])) / 1000
    window = h36m_task.train[1]  # S1/walking_1, frames 2..51 of the downsampled file
    assert window.dtype == torch.float32 and window.shape == (50, 96)
    torch.testing.assert_close(window, expected.flatten(1).float())
    assert window[:, :3].abs().max() == 0  # root at the origin whatever columns 0-5 hold


def test_h36m_rest_file_gives_offsets_in_metres(tmp_path, data_root):
    folder = tmp_path / "h36m"
    for s in (1, 5, 11):
        (folder / f"S{s}").mkdir(parents=True)
        data = np.zeros((240, 99))
        data[:, :6] = 3.0
        np.savetxt(folder / f"S{s}" / "walking_1.txt", data, delimiter=",")
    with pytest.warns(UserWarning, match="missing"):
        task = motion.build_h36m(
            root=str(tmp_path),
            actions=["walking"],
            train_subjects=[1],
            skeleton=str(data_root / "skeletons" / "h36m_32.json"),
        )
    pose = task.test[0][0].reshape(32, 3)
    head_top = 0.1 + 233.383263 + 257.077681 + 121.134938 + 115.002227
    torch.testing.assert_close(pose[15], torch.tensor([0.0, head_top / 1000, 0.0]))
    torch.testing.assert_close(pose[1], torch.tensor([-0.132948591, 0.0, 0.0]))


def test_h36m_bad_files(tmp_path, data_root):
    folder = tmp_path / "h36m"
    for s in (1, 5, 11):
        (folder / f"S{s}").mkdir(parents=True)
        for sub in (1, 2):
            np.savetxt(folder / f"S{s}" / f"walking_{sub}.txt", np.zeros((240, 99)), delimiter=",")
    (folder / "S1" / "walking_2.txt").write_text("0,1,2\n0,1,x\n")
    np.savetxt(folder / "S5" / "walking_2.txt", np.zeros((240, 98)), delimiter=",")
    np.savetxt(folder / "S11" / "walking_1.txt", np.zeros((97, 99)), delimiter=",")
    np.savetxt(folder / "S11" / "walking_2.txt", np.zeros((97, 99)), delimiter=",")
    build = dict(
        root=str(tmp_path),
        actions=["walking"],
        train_subjects=[1],
        skeleton=str(data_root / "skeletons" / "h36m_32.json"),
    )
    with pytest.warns(UserWarning) as record, pytest.raises(ValueError, match="the test split"):
        motion.build_h36m(**build)
    messages = "\n".join(str(w.message) for w in record)
    assert "S1/walking_2.txt: expected comma-separated numbers, 99 per line" in messages
    assert "S5/walking_2.txt: 98 columns per frame, expected 99" in messages
    assert "S11/walking_1.txt: 49 frames after downsampling by 2, fewer than seq_len=50" in messages
    task = motion.build_h36m(**build, test_subjects=[5], max_files=1)
    assert len(task.train) == windows(120) and len(task.val) == 64 and len(task.test) == 36
    with pytest.raises(ValueError, match="unknown actions"):
        motion.build_h36m(**{**build, "actions": ["dancing"]})


def test_h36m_files_with_nan_or_inf_are_skipped_naming_them_or_fail_clearly(tmp_path, data_root):
    folder = tmp_path / "h36m"
    bad = {
        "S1/walking_2.txt": (7, 10, "nan"),
        "S5/walking_2.txt": (0, 3, "inf"),
        "S11/walking_1.txt": (120, 50, "-inf"),
        "S11/walking_2.txt": (239, 98, "NaN"),
    }
    for s in (1, 5, 11):
        (folder / f"S{s}").mkdir(parents=True)
        for sub in (1, 2):
            name = f"S{s}/walking_{sub}.txt"
            lines = [",".join(["0.1"] * 99)] * 240
            if name in bad:  # one non-finite value at (line index, column)
                row, col, value = bad[name]
                lines[row] = ",".join(["0.1"] * col + [value] + ["0.1"] * (98 - col))
            (folder / name).write_text("\n".join(lines) + "\n")
    build = dict(
        root=str(tmp_path),
        actions=["walking"],
        train_subjects=[1],
        skeleton=str(data_root / "skeletons" / "h36m_32.json"),
    )
    with (
        pytest.warns(UserWarning) as record,
        pytest.raises(ValueError, match="the test split has no usable file among its 2 .*warning"),
    ):
        motion.build_h36m(**build)
    messages = "\n".join(str(w.message) for w in record)
    for name, (row, _, _) in bad.items():
        assert (
            f"skipped {folder / name}: 1 non-finite values (NaN or inf), the first on line "
            f"{row + 1}" in messages
        )
    with pytest.warns(UserWarning) as record:
        task = motion.build_h36m(**build, test_subjects=[5])
    assert sorted(str(w.message).split(": 1 non-finite")[0][-16:] for w in record) == [
        "S1/walking_2.txt",
        "S5/walking_2.txt",
        "S5/walking_2.txt",
    ]  # S5 validates and tests
    assert len(task.train) == windows(120) and len(task.test) == windows(120)
    assert all(torch.isfinite(d.frames).all() for d in (task.train, task.val, task.test))


def test_seq_len_longer_than_every_file_names_the_key_and_the_longest(h36m_root, data_root):
    longest = max(
        math.ceil(raw_frames(s, a, sub) / 2)
        for s in (1, 6, 7, 8, 9)
        for a in range(2)
        for sub in (1, 2)
    )
    with (
        pytest.warns(UserWarning, match=f"fewer than seq_len={longest + 1}"),
        pytest.raises(
            ValueError,
            match=rf"data\.seq_len={longest + 1} frames is too long for the train "
            rf"split of data=h36m: the longest of its 20 files has {longest} frames",
        ),
    ):
        build_h36m(h36m_root, data_root, seq_len=longest + 1)
    with pytest.raises(ValueError, match=r"data\.seq_len=1: expected at least 2"):
        build_h36m(h36m_root, data_root, seq_len=1)


# ---------------------------------------------------------------------------------------------
# CMU (real data)


@pytest.fixture(scope="module")
def cmu_task(data_root) -> motion.MotionTask:
    return motion.build_cmu_mocap()


def test_cmu_window_counts_follow_the_rule(cmu_task, data_root):
    folder = data_root / "cmu_mocap_expmap"
    expected = {"train": 0, "val": 0, "test": 0}
    for path in folder.glob("train/*/*.txt"):
        n = math.ceil(len(path.read_text().split()) / 2)
        m = max(-(-n // 10), 50)  # ceil(n / 10)
        if n - m >= 50:
            expected["train"] += windows(n - m)
            expected["val"] += windows(m)
        else:
            expected["train"] += windows(n)
    for path in folder.glob("test/*/*.txt"):
        expected["test"] += windows(math.ceil(len(path.read_text().split()) / 2))
    counts = {split: len(getattr(cmu_task, split)) for split in expected}
    assert counts == expected == {"train": 6598, "val": 432, "test": 1489}
    assert cmu_task.x_dim == 114
    assert cmu_task.train[0].shape == (50, 114) and cmu_task.train[0].dtype == torch.float32


def test_cmu_actions_and_disjoint_frames(cmu_task):
    train_actions = {
        "basketball",
        "basketball_signal",
        "directing_traffic",
        "jumping",
        "running",
        "soccer",
        "walking",
    }
    assert set(cmu_task.train.actions) == train_actions
    assert set(cmu_task.val.actions) == train_actions - {"running"}
    assert set(cmu_task.test.actions) == {
        "basketball",
        "jumping",
        "running",
        "soccer",
        "walking",
        "washwindow",
    }

    def frames(dataset) -> set:
        covered = set()
        for name in dataset.names:
            clip, start = name.split("@")
            covered.update((clip, t) for t in range(int(start), int(start) + 50))
        return covered

    assert not frames(cmu_task.train) & frames(cmu_task.val)


def test_cmu_validation_window_values(cmu_task, data_root):
    """The last validation window of a file holds its last 50 downsampled frames."""
    path = data_root / "cmu_mocap_expmap" / "train" / "walking" / "walking_2.txt"
    x = motion.read_positions(path, cmu_task.skeleton, 2)
    last = max(
        i
        for i, name in enumerate(cmu_task.val.names)
        if name.startswith("train/walking/walking_2@")
    )
    torch.testing.assert_close(cmu_task.val[last], x[-50:])
    assert x[:, :3].abs().max() == 0
    height = 1000 * (x[:, 19 * 3 + 1] - x[:, 1::3].min(1).values)
    assert 1000 < height.median() < 2000  # head above the feet, in mm once scaled back


def test_cmu_max_files(data_root):
    task = motion.build_cmu_mocap(max_files=2, actions=["walking", "jumping"])
    assert {n.split("@")[0] for n in task.test.names} == {
        "test/jumping/jumping_1",
        "test/walking/walking_1",
    }
    assert {n.split("@")[0] for n in task.train.names} == {
        "train/jumping/jumping_1",
        "train/walking/walking_1",
    }


def test_cmu_validation_needs_files_twice_seq_len_and_says_so(data_root):
    files = sorted((data_root / "cmu_mocap_expmap/train/running").glob("*.txt"))
    frames = [math.ceil(len(p.read_text().splitlines()) / 2) for p in files]
    longest = max(frames)
    assert len(files) == 5 and 50 <= longest < 100  # trains at seq_len 50, too short to validate
    with pytest.raises(
        ValueError,
        match=rf"data\.seq_len=50 frames is too long for the val split"
        rf" of data=cmu_mocap: the longest of its 5 files has {longest} frames"
        rf".*100 or more",
    ):
        motion.build_cmu_mocap(actions=["running"])
    # seq_len 40: one window, the last 40 frames, of every file of at least 80 frames
    assert (
        len(motion.build_cmu_mocap(actions=["running"], seq_len=40).val)
        == sum(n >= 80 for n in frames)
        > 0
    )


def test_evaluate_metrics(cmu_task, tmp_path):
    j = 38
    results = cmu_task.evaluate(lambda x: x.clone(), tmp_path, n_examples=0)
    assert results["mpjpe_mm"] == 0 and results["mpjpe_mm_subset"] == 0
    assert results["n_windows"] == 1489

    def shift_joint(joint: int):
        def estimate(x: torch.Tensor) -> torch.Tensor:
            y = x.clone()
            y[..., 3 * joint : 3 * joint + 3] += torch.tensor([0.003, 0.004, 0.0])
            return y

        return estimate

    results = cmu_task.evaluate(shift_joint(3), tmp_path, n_examples=0)  # joint 3 is in ltd25
    assert results["mpjpe_mm"] == pytest.approx(5 / j, rel=1e-4)
    assert results["mpjpe_mm_subset"] == pytest.approx(5 / 25, rel=1e-4)
    results = cmu_task.evaluate(shift_joint(0), tmp_path, n_examples=0)  # the root is not
    assert results["mpjpe_mm_subset"] == 0
    results = cmu_task.evaluate(lambda x: 1.01 * x, tmp_path, n_examples=0)
    per_action = results["per_action"]
    assert set(per_action) == set(cmu_task.test.actions)
    assert sum(a["n_windows"] for a in per_action.values()) == 1489
    for key in ("mpjpe_mm", "mpjpe_mm_subset"):
        weighted = sum(a[key] * a["n_windows"] for a in per_action.values()) / 1489
        assert weighted == pytest.approx(results[key], rel=1e-6)
    assert len({round(a["mpjpe_mm"], 3) for a in per_action.values()}) > 1


def test_evaluate_figures(cmu_task, tmp_path):
    cmu_task.evaluate(lambda x: x + 0.02, tmp_path, n_examples=3)
    assert (tmp_path / "motion.png").stat().st_size > 0
    with Image.open(tmp_path / "motion.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames > 1


def test_the_figures_say_which_colour_is_the_truth_and_which_the_model(
    cmu_task, tmp_path, monkeypatch
):
    """In the GIF (its last frame) and the still figure (first frame of the first panel), the
    skeleton drawn in the colour of the legend's "ground truth" is the test window, and the one
    in the colour of "reconstruction" is the estimate (shifted by 50 mm in x)."""
    figures = []

    class Recorded(Figure):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            figures.append(self)

    monkeypatch.setattr(motion, "Figure", Recorded)
    shift = torch.tensor([0.05, 0.0, 0.0]).repeat(cmu_task.skeleton.n_joints)
    cmu_task.evaluate(lambda x: x + shift, tmp_path, n_examples=1)
    window = cmu_task._example_windows(1)[0]
    truth = cmu_task.test[window]
    views = {
        "ground truth": motion.project(cmu_task._joints(truth)),
        "reconstruction": motion.project(cmu_task._joints(truth + shift)),
    }
    gif, png = figures
    last = range(0, len(truth), math.ceil(len(truth) / motion.GIF_FRAMES))[-1]
    for fig, t in [(gif, last), (png, 0)]:
        (legend,) = fig.legends
        labels = [text.get_text() for text in legend.get_texts()]
        assert labels == ["ground truth", "reconstruction"]
        drawn = {to_hex(c.get_color()[0]): c.get_segments() for c in fig.axes[0].collections}
        for label, handle in zip(labels, legend.legend_handles, strict=True):
            bones = motion._bones(views[label][t], cmu_task.skeleton.parents)
            np.testing.assert_allclose(np.stack(drawn[to_hex(handle.get_color())]), bones)
    assert len({to_hex(h.get_color()) for h in legend.legend_handles}) == 2


def test_render(cmu_task, tmp_path):
    paths = cmu_task.render(cmu_task.test.batch(torch.arange(2)), tmp_path)
    assert paths == [tmp_path / "samples.gif", tmp_path / "samples.png"]
    assert paths[1].stat().st_size > 0
    with Image.open(paths[0]) as gif:
        assert gif.format == "GIF" and gif.n_frames > 1
