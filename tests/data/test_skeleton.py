"""Forward kinematics and MPJPE against hand-computed poses and an independent reference."""

import math

import pytest
import torch

from pyro_dvae.data.skeleton import Skeleton, mpjpe_mm, rodrigues


@pytest.fixture(scope="module")
def h36m(data_root) -> Skeleton:
    return Skeleton.from_json(data_root / "skeletons" / "h36m_32.json")


@pytest.fixture(scope="module")
def cmu(data_root) -> Skeleton:
    return Skeleton.from_json(data_root / "skeletons" / "cmu_38.json")


def reference_fk(frame: list[float], skeleton: Skeleton) -> list[list[float]]:
    """Plain-Python double-precision FK of one frame, written from the JSON's convention."""

    def matmul(a, b):
        return [[sum(a[i][k] * b[k][j] for k in range(3)) for j in range(3)] for i in range(3)]

    def rotation(r):
        theta = math.sqrt(sum(v * v for v in r))
        if theta == 0:
            return [[float(i == j) for j in range(3)] for i in range(3)]
        k1, k2, k3 = (v / theta for v in r)
        k = [[0, -k3, k2], [k3, 0, -k1], [-k2, k1, 0]]
        kk = matmul(k, k)
        return [
            [
                float(i == j) + math.sin(theta) * k[i][j] + (1 - math.cos(theta)) * kk[i][j]
                for j in range(3)
            ]
            for i in range(3)
        ]

    offsets = skeleton.offsets_mm.tolist()
    columns = skeleton.rot_columns.tolist()
    g, p = [], []
    for i, parent in enumerate(skeleton.parents):
        r = rotation([frame[c] for c in columns[i]] if columns[i][0] >= 0 else [0.0] * 3)
        if parent < 0:
            g.append(r)
            p.append([offsets[0][j] + skeleton.translation_scale * frame[j] for j in range(3)])
        else:
            row = [sum(offsets[i][k] * g[parent][k][j] for k in range(3)) for j in range(3)]
            g.append(matmul(r, g[parent]))
            p.append([p[parent][j] + row[j] for j in range(3)])
    return p


def test_zero_expmap_gives_rest_pose(h36m):
    p = h36m.forward_kinematics(torch.zeros(99, dtype=torch.float64))
    hand = {
        0: (0, 0, 0),
        1: (-132.948591, 0, 0),
        3: (-132.948591, -442.894612 - 454.206447, 0),
        4: (-132.948591, -442.894612 - 454.206447, 162.767078),
        8: (132.948826, -442.894413 - 454.20659, 0),
        15: (0, 0.1 + 233.383263 + 257.077681 + 121.134938 + 115.002227, 0),
        19: (0, 0.1 + 233.383263 + 257.077681 + 151.034226 + 278.882773 + 251.733451, 0),
    }
    for joint, position in hand.items():
        torch.testing.assert_close(p[joint], torch.tensor(position, dtype=torch.float64))


def test_rest_heights(h36m, cmu):
    """Head top above the lowest foot joint: 1624 mm (H3.6M) and 1765 mm (CMU, skeletons README)."""
    p = h36m.forward_kinematics(torch.zeros(99))
    assert p[15, 1] - p[:, 1].min() == pytest.approx(1623.80, abs=0.01)
    p = cmu.forward_kinematics(torch.zeros(117))
    assert p[19, 1] - p[:, 1].min() == pytest.approx(1765.22, abs=0.01)


def test_right_angle_at_the_knee(h36m):
    """90° about x at joint 2 (columns 9..11): R = [[1,0,0],[0,0,-1],[0,1,0]], so the row-vector
    offsets (0, a, 0) -> (0, 0, -a) and (0, 0, c) -> (0, c, 0) below the knee."""
    frame = torch.zeros(99, dtype=torch.float64)
    frame[9] = math.pi / 2
    p = h36m.forward_kinematics(frame)
    rest = h36m.forward_kinematics(torch.zeros(99, dtype=torch.float64))
    knee = (-132.948591, -442.894612, 0.0)
    ankle = (knee[0], knee[1], 454.206447)
    toe = (knee[0], knee[1] + 162.767078, 454.206447)
    for joint, position in {2: knee, 3: ankle, 4: toe}.items():
        torch.testing.assert_close(p[joint], torch.tensor(position, dtype=torch.float64))
    moved = [2, 3, 4, 5]
    torch.testing.assert_close(p[3:6, 2], torch.full((3,), 454.206447, dtype=torch.float64))
    others = [j for j in range(32) if j not in moved]
    torch.testing.assert_close(p[others], rest[others])


def test_root_translation_moves_every_joint(cmu):
    frame = torch.zeros(117, dtype=torch.float64)
    frame[:3] = torch.tensor([1.0, 2.0, 3.0])
    shift = cmu.forward_kinematics(frame) - cmu.forward_kinematics(torch.zeros_like(frame))
    torch.testing.assert_close(shift, torch.tensor([70.0, 140.0, 210.0]).double().expand(38, 3))


@pytest.mark.parametrize("name", ["h36m", "cmu"])
def test_matches_reference_and_keeps_bone_lengths(name, request):
    skeleton = request.getfixturevalue(name)
    frames = torch.randn(4, skeleton.frame_columns, dtype=torch.float64)
    p = skeleton.forward_kinematics(frames)
    for frame, positions in zip(frames.tolist(), p, strict=True):
        expected = torch.tensor(reference_fk(frame, skeleton), dtype=torch.float64)
        torch.testing.assert_close(positions, expected, rtol=0, atol=1e-9)
    p32 = skeleton.forward_kinematics(frames.float().reshape(2, 2, -1))
    assert p32.shape == (2, 2, skeleton.n_joints, 3)
    bones = (p32[..., 1:, :] - p32[..., list(skeleton.parents[1:]), :]).norm(dim=-1)
    lengths = skeleton.offsets_mm[1:].norm(dim=-1).float().expand_as(bones)
    torch.testing.assert_close(bones, lengths, rtol=0, atol=1e-3)


def test_rodrigues_small_angles_and_gradient():
    r = torch.tensor(
        [[1e-6, -2e-6, 3e-6], [0.0, 0.0, 0.0], [0.3, -0.2, 1.1]],
        dtype=torch.float64,
        requires_grad=True,
    )
    rot = rodrigues(r)
    x, y, z = 1e-6, -2e-6, 3e-6
    first_order = torch.tensor([[1, -z, y], [z, 1, -x], [-y, x, 1]], dtype=torch.float64)
    torch.testing.assert_close(rot[0], first_order, rtol=0, atol=1e-11)
    torch.testing.assert_close(rot[1], torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(rot @ rot.transpose(-1, -2), torch.eye(3).double().expand(3, 3, 3))
    rot.sum().backward()
    assert torch.isfinite(r.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_cuda_matches_cpu(h36m):
    frames = torch.randn(16, 99)
    torch.testing.assert_close(
        h36m.forward_kinematics(frames.cuda()).cpu(),
        h36m.forward_kinematics(frames),
        rtol=0,
        atol=1e-3,
    )


def test_mpjpe_hand_case():
    n_joints = 4
    x = torch.zeros(2, 5, 3 * n_joints)
    y = x.clone()
    y[..., 3:6] = torch.tensor([0.003, 0.004, 0.0])  # joint 1 off by (3, 4, 0) mm
    torch.testing.assert_close(mpjpe_mm(x, y, n_joints), torch.full((2, 5), 5.0 / n_joints))
    torch.testing.assert_close(mpjpe_mm(x, y, n_joints, joints=[1]), torch.full((2, 5), 5.0))
    torch.testing.assert_close(mpjpe_mm(x, y, n_joints, joints=[0, 2]), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="12"):
        mpjpe_mm(x, y, 5)


def test_mpjpe_gradient_is_finite_at_zero_error():
    x = torch.randn(3, 6)
    y = x.clone().requires_grad_(True)
    mpjpe_mm(x, y, 2).sum().backward()
    assert torch.equal(y.grad, torch.zeros_like(y))


def test_subset_lookup(h36m, cmu):
    assert len(h36m.subset("ltd22")) == 22 and len(cmu.subset("ltd25")) == 25
    with pytest.raises(ValueError, match="ltd25"):
        h36m.subset("ltd25")


def test_rejects_wrong_frame_width(h36m):
    with pytest.raises(ValueError, match="99 columns"):
        h36m.forward_kinematics(torch.zeros(3, 117))
