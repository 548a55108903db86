"""Kinematic skeletons read from a skeleton JSON, forward kinematics in torch, and MPJPE.

A skeleton JSON (``skeletons/h36m_32.json``, ``skeletons/cmu_38.json`` under the data root) gives
``parents`` (``parents[i] < i``, ``-1`` for the root), ``offsets_mm`` ``(J, 3)`` (offset of joint
``i`` from its parent, rest pose, parent frame), ``rot_columns`` (the three exponential-map columns
of joint ``i`` in a frame vector, ``null`` for end sites) and ``root_position_columns``. Its
``forward_kinematics`` key states the convention implemented by :meth:`Skeleton.forward_kinematics`:

* ``R[i] = Rodrigues(r_i)`` from the exponential map ``r_i``;
* ``G[root] = R[root]``, ``G[i] = R[i] @ G[parent]`` (row-vector convention);
* ``p[root] = offset[root] + translation``, ``p[i] = p[parent] + offset[i] @ G[parent]``.

Output positions are in millimetres in the frame of the offsets (y up).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

SMALL_ANGLE = 1e-4
"""Below this rotation angle (rad), Rodrigues' coefficients use their Taylor series."""


def rodrigues(r: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` of exponential maps ``r`` ``(..., 3)``.

    ``R = I + sin θ K + (1 − cos θ) K²`` with ``θ = |r|`` and ``K`` the skew matrix of ``r/θ``.
    Since ``K² = k kᵀ − I`` (``k = r/θ``), ``R = cos θ I + a [r]× + b r rᵀ`` with
    ``a = sin θ / θ`` and ``b = (1 − cos θ) / θ²``, built entry by entry. Below
    :data:`SMALL_ANGLE` the three coefficients use their Taylor series, so ``θ → 0`` gives ``I``
    with finite gradients.
    """
    x, y, z = r.unbind(-1)
    theta2 = x * x + y * y + z * z
    small = theta2 < SMALL_ANGLE**2
    theta = torch.where(small, torch.ones_like(theta2), theta2).sqrt()
    cos, sin = torch.cos(theta), torch.sin(theta)
    c = torch.where(small, 1 - theta2 / 2, cos)
    a = torch.where(small, 1 - theta2 / 6, sin / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - cos) / theta**2)
    bxy, bxz, byz = b * x * y, b * x * z, b * y * z
    ax, ay, az = a * x, a * y, a * z
    rows = (
        c + b * x * x,
        bxy - az,
        bxz + ay,
        bxy + az,
        c + b * y * y,
        byz - ax,
        bxz - ay,
        byz + ax,
        c + b * z * z,
    )
    return torch.stack(rows, -1).unflatten(-1, (3, 3))


@dataclass(frozen=True)
class Skeleton:
    """A kinematic tree of ``n_joints`` joints, see the module docstring.

    Attributes:
        name: the JSON's ``name`` (``h36m_32``, ``cmu_38``).
        parents: parent index of each joint (``-1`` for the root).
        offsets_mm: ``(J, 3)`` float64 bone offsets in mm.
        rot_columns: ``(J, 3)`` long, exp-map columns of each joint; ``-1`` where the JSON has none.
        position_columns: the 3 root-translation columns.
        translation_scale: mm per unit of the root-translation columns (the JSON's
            ``offset_scale_mm_per_raw_unit``, 1 when absent).
        frame_columns: columns of one frame of the data files.
        joint_names: one name per joint.
        subsets: named joint subsets for evaluation (the JSON's ``notes.subsets``).
    """

    name: str
    parents: tuple[int, ...]
    offsets_mm: torch.Tensor
    rot_columns: torch.Tensor
    position_columns: tuple[int, ...]
    translation_scale: float
    frame_columns: int
    joint_names: tuple[str, ...]
    subsets: dict[str, tuple[int, ...]]

    @classmethod
    def from_json(cls, path: str | Path) -> Skeleton:
        """Read a skeleton JSON; raises ``ValueError`` when its tree is not in topological order."""
        spec = json.loads(Path(path).read_text())
        parents = tuple(spec["parents"])
        if parents[0] != -1 or any(not 0 <= p < i for i, p in enumerate(parents) if i > 0):
            raise ValueError(f"{path}: 'parents' must start with -1 and have parents[i] < i")
        subsets = {
            key: tuple(value["joints"])
            for key, value in spec.get("notes", {}).get("subsets", {}).items()
            if "joints" in value
        }
        return cls(
            name=spec["name"],
            parents=parents,
            offsets_mm=torch.tensor(spec["offsets_mm"], dtype=torch.float64),
            rot_columns=torch.tensor([c or [-1, -1, -1] for c in spec["rot_columns"]]),
            position_columns=tuple(spec["root_position_columns"]),
            translation_scale=float(spec.get("offset_scale_mm_per_raw_unit", 1.0)),
            frame_columns=spec["frame_columns"],
            joint_names=tuple(spec["joint_names"]),
            subsets=subsets,
        )

    @property
    def n_joints(self) -> int:
        return len(self.parents)

    @property
    def root_columns(self) -> tuple[int, ...]:
        """The root translation and rotation columns (0–5), zeroed by the 3D-MPJPE protocols."""
        return self.position_columns + tuple(self.rot_columns[0].tolist())

    def subset(self, name: str) -> tuple[int, ...]:
        """The joints of the evaluation subset ``name`` (a key of the JSON's ``notes.subsets``)."""
        if name not in self.subsets:
            raise ValueError(
                f"skeleton {self.name} has no joint subset {name!r}; expected one of "
                f"{sorted(self.subsets)}"
            )
        return self.subsets[name]

    def forward_kinematics(self, frames: torch.Tensor) -> torch.Tensor:
        """Joint positions ``(..., J, 3)`` in mm of exp-map frames ``(..., frame_columns)``.

        Vectorised over the leading dimensions; runs on the device and in the dtype of ``frames``.
        """
        if frames.shape[-1] != self.frame_columns:
            raise ValueError(
                f"skeleton {self.name} expects {self.frame_columns} columns per frame, got "
                f"{frames.shape[-1]}"
            )
        columns = self.rot_columns.to(frames.device)
        r = frames[..., columns.clamp_min(0)] * (columns >= 0)
        local = rodrigues(r.movedim(-2, 0).contiguous())  # (J, ..., 3, 3), contiguous per joint
        offsets = self.offsets_mm.to(frames)
        root = offsets[0] + self.translation_scale * frames[..., list(self.position_columns)]
        positions, rotations = [root], [local[0]]  # p[i], G[i]
        for i, parent in enumerate(self.parents[1:], start=1):
            positions.append(positions[parent] + offsets[i] @ rotations[parent])
            rotations.append(local[i] @ rotations[parent])
        return torch.stack(positions, -2)


def check_joint_features(x_m: torch.Tensor, n_joints: int) -> None:
    """Refuse joint positions ``(..., F)`` unless F = 3 ``n_joints`` (x, y, z per joint)."""
    if x_m.shape[-1] != 3 * n_joints:
        raise ValueError(f"expected {3 * n_joints} = 3 x {n_joints} features, got {x_m.shape[-1]}")


def mpjpe_mm(
    x_m: torch.Tensor, y_m: torch.Tensor, n_joints: int, joints: Sequence[int] | None = None
) -> torch.Tensor:
    """Mean per-joint position error in mm of each frame.

    Args:
        x_m, y_m: joint positions in metres, ``(..., 3 n_joints)`` (joint-major: x, y, z of
            joint 0, then joint 1, ...).
        n_joints: J.
        joints: average over these joints only (default: all J).

    Returns:
        ``(...)``: the mean over joints of the Euclidean distance ``1000 |x_j − y_j|``.
    """
    check_joint_features(x_m, n_joints)
    diff = 1000 * (x_m - y_m).unflatten(-1, (n_joints, 3))
    if joints is not None:
        diff = diff[..., list(joints), :]
    return torch.linalg.vector_norm(diff, dim=-1).mean(-1)
