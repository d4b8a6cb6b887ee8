"""Procedural phantoms with lesion masks: ``synthetic:chest2d[@SIZE]`` and ``synthetic:nodule3d[@SIZE]``.

Each generator has a segmentation variant, ``synthetic:chest2d-seg[@SIZE]`` and
``synthetic:nodule3d-seg[@SIZE]``: the same samples with :attr:`Task.SEGMENTATION`, the lesion
mask as a label map per finding (``Sample.mask`` value = the finding's class index) and class
names ``["background", <findings>]`` (chest2d: background, nodule, opacity; nodule3d: background,
nodule); ``normal`` images keep an empty mask and ``Record.label`` keeps the finding (for
stratified splits).

Both generators are deterministic by seed and lazy: opening a dataset only draws the patient
structure (who has which class and how many images); pixels are rendered on :meth:`Dataset.load`
with vectorized numpy (a few ms per 64 px image, a few ms per 32^3 volume).

``chest2d``
    Frontal chest radiographs (modality ``DX``), 8-bit values 0..255 held as float32 so that every
    writer (PNG, DICOM, NIfTI, npz) round-trips them exactly. Anatomy: body outline with a thicker
    centre, two lung fields cut by the diaphragm domes, mediastinum, heart shadow towards the
    patient's left (image right), spine, hila, posterior ribs, lung markings, plus exposure,
    gamma, detector non-uniformity and quantum noise. Classes ``normal``, ``nodule`` (1-2 round
    nodules in a lung) and ``opacity`` (patchy diffuse opacity of one or both lower lung zones).
``nodule3d``
    Chest CT volumes in Hounsfield units (modality ``CT``, default 32^3, axes (D, H, W) =
    (inferior->superior, anterior->posterior, patient right->left)): body with a fat shell, lungs,
    heart, spine, ribs and lung vessels (the distractor: vessel cross-sections look like small
    nodules). Classes ``normal`` and ``nodule`` (one solid or part-solid nodule).

3D samples carry ``affine``: voxel (d, h, w) -> RAS mm, the project's ``Sample.affine`` convention.
Every sample carries ``mask`` (uint8, spatial shape; empty for ``normal``): the lesion ground
truth used to score where a model looks. Patients have 1-3 images each (the same anatomy and
lesion seen with a different position and exposure), so patient-level splits matter. The
source assigns no splits; :mod:`medlens.data.splits` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from medlens.data.sample import Dataset, Record, Sample, Task
from medlens.errors import MedlensError

GENERATORS = ("chest2d", "nodule3d")
SEG_SUFFIX = "-seg"  # chest2d-seg: the segmentation variant


# -- parameters ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LesionParams:
    """How many lesions, how big and how visible. Ranges are (low, high), drawn uniformly.

    Sizes are fractions of the image side; contrasts are in the generator's own units
    (chest2d: fraction of the 0..1 density scale before exposure; nodule3d: fraction of the way
    from lung to solid-tissue density).
    """

    nodule_count: tuple[int, int] = (1, 2)
    nodule_radius: tuple[float, float] = (0.045, 0.075)
    nodule_contrast: tuple[float, float] = (0.28, 0.4)
    opacity_blobs: tuple[int, int] = (3, 6)
    opacity_radius: tuple[float, float] = (0.06, 0.11)
    opacity_contrast: tuple[float, float] = (0.17, 0.25)


@dataclass(frozen=True)
class SynthConfig:
    """One generator's defaults. ``open_synthetic`` overrides ``size`` and ``n_per_class``."""

    name: str
    dims: int
    size: int
    n_per_class: int
    class_names: tuple[str, ...]
    modality: str
    images_per_patient: tuple[int, int] = (1, 3)
    noise: tuple[float, float] = (0.012, 0.025)
    lesions: LesionParams = field(default_factory=LesionParams)


CHEST2D = SynthConfig(
    name="chest2d",
    dims=2,
    size=64,
    n_per_class=170,
    class_names=("normal", "nodule", "opacity"),
    modality="DX",
)
NODULE3D = SynthConfig(
    name="nodule3d",
    dims=3,
    size=32,
    n_per_class=100,
    class_names=("normal", "nodule"),
    modality="CT",
    noise=(15.0, 30.0),  # HU
    lesions=LesionParams(nodule_count=(1, 1), nodule_radius=(0.035, 0.07), nodule_contrast=(0.55, 1.0)),
)
CONFIGS = {c.name: c for c in (CHEST2D, NODULE3D)}


# -- public entry point ------------------------------------------------------------------------
def parse_spec(spec: str) -> tuple[str, int | None]:
    """``"chest2d@64"`` -> ``("chest2d", 64)``; ``"nodule3d-seg"`` -> ``("nodule3d-seg", None)``."""
    name, sep, size_text = spec.strip().partition("@")
    name = name.strip().lower()
    if name.removesuffix(SEG_SUFFIX) not in CONFIGS:
        known = ", ".join(g + v for g in GENERATORS for v in ("", SEG_SUFFIX))
        raise MedlensError(f"unknown synthetic generator '{name}' (known: {known})", f"synthetic:{spec}")
    if not sep:
        return name, None
    try:
        size = int(size_text)
    except ValueError:
        raise MedlensError(f"size after '@' must be an integer, got '{size_text}'", f"synthetic:{spec}") from None
    return name, size


def open_synthetic(
    spec: str,
    *,
    seed: int = 0,
    n_per_class: int | None = None,
    size: int | None = None,
    config: SynthConfig | None = None,
) -> "SyntheticDataset":
    """Open ``synthetic:SPEC`` (``chest2d[-seg][@SIZE]`` or ``nodule3d[-seg][@SIZE]``) as a lazy dataset.

    ``size`` and ``n_per_class`` override the spec and the defaults; ``config`` replaces the
    generator's defaults entirely (e.g. ``replace(CHEST2D, lesions=LesionParams(...))``).
    """
    name, spec_size = parse_spec(spec)
    cfg = config or CONFIGS[name.removesuffix(SEG_SUFFIX)]
    size = size if size is not None else spec_size
    if size is not None:
        lo, hi = (16, 1024) if cfg.dims == 2 else (16, 256)
        if not lo <= size <= hi:
            raise MedlensError(f"size {size} out of range ({lo}..{hi})", f"synthetic:{spec}")
        cfg = replace(cfg, size=size)
    if n_per_class is not None:
        if n_per_class < 1:
            raise MedlensError(f"n_per_class must be at least 1, got {n_per_class}", f"synthetic:{spec}")
        cfg = replace(cfg, n_per_class=n_per_class)
    return SyntheticDataset(cfg, seed=seed, segmentation=name.endswith(SEG_SUFFIX))


class SyntheticDataset(Dataset):
    """Lazily rendered phantoms; records carry (class, patient, view) and the seed.

    ``segmentation``: the ``-seg`` variant (see the module doc)."""

    def __init__(self, config: SynthConfig, *, seed: int = 0, segmentation: bool = False):
        self.config = config
        self.seed = int(seed)
        self.segmentation = segmentation
        records = _patient_structure(config, self.seed)
        if segmentation:
            task, class_names = Task.SEGMENTATION, ("background", *config.class_names[1:])
        else:
            task = Task.MULTICLASS if len(config.class_names) > 2 else Task.BINARY
            class_names = config.class_names
        uri = f"synthetic:{config.name}{SEG_SUFFIX if segmentation else ''}@{config.size}"
        super().__init__(
            uri, records, task=task, class_names=class_names, dims=config.dims, modality=config.modality, uri=uri
        )
        self._cache: dict[str, Sample] = {}
        per_sample = 4 * config.size**config.dims
        self._cache_limit = max(0, (256 << 20) // per_sample)

    def _load(self, record: Record) -> Sample:
        hit = self._cache.get(record.id)
        if hit is not None:
            return _copy(hit)
        sample = self._render(record)
        if len(self._cache) < self._cache_limit:
            self._cache[record.id] = sample
        return _copy(sample)

    def _render(self, record: Record) -> Sample:
        render = _render_chest2d if self.config.dims == 2 else _render_nodule3d
        image, mask, spacing, affine, lesions = render(self.config, self.seed, **record.extra)
        if self.segmentation:
            mask = (mask > 0).astype(np.uint8) * np.uint8(record.label)  # label value = the finding's class
        return Sample(
            id=record.id,
            image=image[None].astype(np.float32),
            label=record.label,
            patient_id=record.patient_id,
            origin=record.origin,
            spacing=spacing,
            affine=affine,
            mask=mask,
            modality=self.config.modality,
            meta={
                "generator": self.config.name,
                "seed": self.seed,
                "lesions": lesions,
                "class_name": self.config.class_names[record.label],
            },
        )


def _copy(s: Sample) -> Sample:
    return replace(s, image=s.image.copy(), mask=None if s.mask is None else s.mask.copy(), meta=dict(s.meta))


def _patient_structure(cfg: SynthConfig, seed: int) -> list[Record]:
    """Patients with 1-3 images each, ``n_per_class`` images per class; patients interleaved by class."""
    per_class: list[list[Record]] = []
    lo, hi = cfg.images_per_patient
    for k, cname in enumerate(cfg.class_names):
        rng = np.random.default_rng([seed, 0, k])
        recs: list[Record] = []
        p = 0
        while len(recs) < cfg.n_per_class:
            n_views = min(int(rng.integers(lo, hi + 1)), cfg.n_per_class - len(recs))
            pid = f"{cfg.name}-{cname[:3]}-p{p:04d}"
            for v in range(n_views):
                recs.append(
                    Record(
                        id=f"{pid}-v{v}",
                        label=k,
                        patient_id=pid,
                        origin=f"synthetic:{cfg.name}@{cfg.size}#seed{seed}/{pid}/v{v}",
                        extra={"klass": k, "patient": p, "view": v},
                    )
                )
            p += 1
        per_class.append(recs)
    # interleave patients of the classes so that any prefix is roughly balanced
    out: list[Record] = []
    queues = [list(r) for r in per_class]
    while any(queues):
        for q in queues:
            if q:
                first = q[0].patient_id
                while q and q[0].patient_id == first:
                    out.append(q.pop(0))
    return out


def _u(rng: np.random.Generator, lohi: tuple[float, float]) -> float:
    return float(rng.uniform(*lohi))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


# -- chest2d -----------------------------------------------------------------------------------
def _chest_anatomy(rng: np.random.Generator) -> dict[str, float]:
    """Per-patient anatomy in body coordinates (u right->left of the image, v top->bottom)."""
    return dict(
        bw=rng.uniform(0.84, 0.96),
        bh=rng.uniform(1.25, 1.45),
        lung_dx=rng.uniform(0.40, 0.47),
        lung_dy=rng.uniform(-0.16, -0.06),
        lung_rx=rng.uniform(0.32, 0.37),
        lung_ry=rng.uniform(0.52, 0.62),
        diaph=rng.uniform(0.30, 0.42),
        diaph_tilt=rng.uniform(0.02, 0.08),
        heart_x=rng.uniform(0.08, 0.16),
        heart_y=rng.uniform(0.12, 0.2),
        heart_rx=rng.uniform(0.26, 0.34),
        heart_ry=rng.uniform(0.2, 0.26),
        rib_gap=rng.uniform(0.15, 0.19),
        rib_phase=rng.uniform(0, 1),
        rib_curve=rng.uniform(0.7, 1.1),
        zoom=rng.uniform(0.9, 1.08),
        cx=rng.uniform(-0.06, 0.06),
        cy=rng.uniform(-0.04, 0.08),
    )


def _lung_fields(u: np.ndarray, v: np.ndarray, a: dict[str, float], edge: float) -> np.ndarray:
    """Soft membership (0..1) of the two lung fields, cut below by the diaphragm domes."""
    total = np.zeros(np.broadcast(u, v).shape)
    for side in (-1.0, 1.0):
        cu, cv = side * a["lung_dx"] * a["bw"], a["lung_dy"]
        ru, rv = a["lung_rx"] * a["bw"], a["lung_ry"]
        # narrower apex: scale the horizontal radius with height
        ru_v = ru * (0.75 + 0.25 * np.clip((v - cv + rv) / rv, 0, 1.3))
        r = np.sqrt(((u - cu) / ru_v) ** 2 + ((v - cv) / rv) ** 2)
        dome = a["diaph"] + (a["diaph_tilt"] if side > 0 else 0.0) + 0.22 * ((u - cu) / ru) ** 2
        total += _sigmoid((1 - r) / edge) * _sigmoid((dome - v) / edge)
    return np.clip(total, 0, 1)


def _in_lung(a: dict[str, float], u: float, v: float, margin: float) -> bool:
    return (
        float(_lung_fields(np.array(u - margin), np.array(v), a, 0.02)) > 0.95
        and float(_lung_fields(np.array(u + margin), np.array(v + margin), a, 0.02)) > 0.95
    )


def _chest_lesions(cfg: SynthConfig, rng: np.random.Generator, a: dict[str, float], klass: str) -> list[dict[str, Any]]:
    """Lesions in body coordinates, drawn once per patient (all views show the same lesions)."""
    L = cfg.lesions
    out: list[dict[str, Any]] = []
    if klass == "nodule":
        for _ in range(int(rng.integers(L.nodule_count[0], L.nodule_count[1] + 1))):
            r = _u(rng, L.nodule_radius) * 2.0  # image side is 2 units
            for _try in range(200):
                u, v = rng.uniform(-0.85, 0.85), rng.uniform(-0.75, 0.5)
                if _in_lung(a, u, v, r):
                    break
            out.append(dict(kind="nodule", u=float(u), v=float(v), r=float(r), contrast=_u(rng, L.nodule_contrast)))
    elif klass == "opacity":
        sides = [(-1.0,), (1.0,), (-1.0, 1.0)][int(rng.integers(0, 3))]
        contrast = _u(rng, L.opacity_contrast)
        top = rng.uniform(-0.25, 0.1)  # upper limit of the affected zone
        for side in sides:
            for _ in range(int(rng.integers(L.opacity_blobs[0], L.opacity_blobs[1] + 1))):
                cu = side * a["lung_dx"] * a["bw"] + rng.uniform(-0.7, 0.7) * a["lung_rx"] * a["bw"]
                cv = rng.uniform(top, a["diaph"])
                out.append(
                    dict(
                        kind="opacity",
                        u=float(cu),
                        v=float(cv),
                        r=_u(rng, L.opacity_radius) * 2.0,
                        contrast=contrast * rng.uniform(0.7, 1.3),
                    )
                )
    return out


def _render_chest2d(cfg: SynthConfig, seed: int, *, klass: int, patient: int, view: int):
    S = cfg.size
    prng = np.random.default_rng([seed, 1, klass, patient])
    a = _chest_anatomy(prng)
    lesions = _chest_lesions(cfg, prng, a, cfg.class_names[klass])
    vrng = np.random.default_rng([seed, 2, klass, patient, view])

    # pixel grid -> body coordinates (patient position, size, small rotation per view)
    y, x = np.mgrid[0:S, 0:S].astype(np.float64)
    x = (x + 0.5) / S * 2 - 1
    y = (y + 0.5) / S * 2 - 1
    th = vrng.uniform(-0.06, 0.06)
    dx, dy = a["cx"] + vrng.uniform(-0.04, 0.04), a["cy"] + vrng.uniform(-0.04, 0.04)
    zoom = a["zoom"] * vrng.uniform(0.97, 1.03)
    xs, ys = (x - dx) / zoom, (y - dy) / zoom
    u = np.cos(th) * xs + np.sin(th) * ys
    v = -np.sin(th) * xs + np.cos(th) * ys

    edge = 2.5 / S  # soft edges about one pixel wide
    rb = np.sqrt((u / a["bw"]) ** 2 + (v / a["bh"]) ** 2)
    body = _sigmoid((1 - rb) / edge) * (0.5 + 0.5 * np.sqrt(np.clip(1 - (u / a["bw"]) ** 2, 0, 1)))
    lung = _lung_fields(u, v, a, edge)
    rh = np.sqrt(((u - a["heart_x"]) / a["heart_rx"]) ** 2 + ((v - a["heart_y"]) / a["heart_ry"]) ** 2)
    heart = _sigmoid((1 - rh) / edge)
    medi = _sigmoid((0.13 * a["bw"] - np.abs(u - 0.02)) / edge) * _sigmoid((a["heart_y"] - v) / 0.05)
    spine = _sigmoid((0.06 - np.abs(u)) / edge)
    hila = sum(np.exp(-(((u - s * 0.2) / 0.07) ** 2 + ((v + 0.02) / 0.1) ** 2)) for s in (-1, 1))
    # posterior ribs: arcs sagging laterally, repeated down the chest, not over the spine
    t = v + a["rib_curve"] * (np.abs(u) - 0.35) ** 2
    phase = (t - a["lung_dy"]) / a["rib_gap"] + a["rib_phase"]
    ribs = np.exp(-(((phase - np.round(phase)) / 0.2) ** 2)) * _sigmoid((np.abs(u) - 0.1) / 0.03)
    ribs *= _sigmoid((a["diaph"] + 0.1 - v) / 0.05) * (0.3 + 0.7 * lung)
    # clavicles: bands rising laterally from the top of the mediastinum
    clav = (
        np.exp(-(((v + 0.62 - 0.22 * np.abs(u)) / 0.05) ** 2))
        * _sigmoid((np.abs(u) - 0.08) / 0.03)
        * _sigmoid((0.65 - np.abs(u)) / 0.04)
    )
    marks = gaussian_filter(vrng.normal(size=(S, S)), S / 24)
    marks = marks / (marks.std() + 1e-9)

    dens = 0.06 + 0.55 * body
    dens -= 0.34 * lung * (1 - 0.8 * heart)
    dens += 0.10 * heart + 0.16 * medi * (1 - lung) + 0.07 * spine * body + 0.07 * hila
    dens += 0.065 * ribs * body + 0.08 * clav * body + 0.03 * marks * lung

    mask = np.zeros((S, S), dtype=np.uint8)
    for les in lesions:
        d = np.sqrt((u - les["u"]) ** 2 + (v - les["v"]) ** 2)
        if les["kind"] == "nodule":
            r = les["r"]
            dens += les["contrast"] * np.sqrt(np.clip(1 - (d / r) ** 2, 0, 1)) * _sigmoid((r - d) / edge)
            mask |= (d <= r).astype(np.uint8)
        else:
            blob = np.exp(-0.5 * (d / (0.6 * les["r"])) ** 2) * lung
            dens += les["contrast"] * blob
            mask |= ((blob > 0.35) & (lung > 0.5)).astype(np.uint8)

    # exposure, gamma, detector non-uniformity, quantum noise
    gain, bias, gamma = vrng.uniform(0.85, 1.15), vrng.uniform(-0.05, 0.05), vrng.uniform(0.85, 1.15)
    img = np.clip(gain * dens + bias, 0, 1) ** gamma
    flat = gaussian_filter(vrng.normal(size=(S, S)), S / 6)
    img += 0.015 * flat / (flat.std() + 1e-9)
    img += vrng.normal(0, _u(vrng, cfg.noise), size=(S, S))
    img = np.round(np.clip(img, 0, 1) * 255)
    spacing = (400.0 / S, 400.0 / S)
    return img.astype(np.float32), mask, spacing, None, lesions


# -- nodule3d ----------------------------------------------------------------------------------
def _ct_anatomy(rng: np.random.Generator) -> dict[str, Any]:
    a: dict[str, Any] = dict(
        bw=rng.uniform(0.78, 0.9),
        bh=rng.uniform(0.55, 0.65),
        lung_dx=rng.uniform(0.40, 0.48),
        lung_rx=rng.uniform(0.28, 0.34),
        lung_ry=rng.uniform(0.62, 0.75),
        lung_rz=rng.uniform(0.75, 0.9),
        lung_z=rng.uniform(0.0, 0.15),
        diaph=rng.uniform(-0.55, -0.35),
        heart_x=rng.uniform(0.05, 0.15),
        heart_y=rng.uniform(-0.25, -0.12),
        heart_z=rng.uniform(-0.45, -0.25),
        rib_gap=rng.uniform(0.2, 0.26),
        rib_phase=rng.uniform(0, 1),
        cx=rng.uniform(-0.05, 0.05),
        cy=rng.uniform(-0.05, 0.05),
        cz=rng.uniform(-0.05, 0.05),
    )
    # vessels: segments from the hila into each lung
    vessels = []
    for side in (-1.0, 1.0):
        hilum = np.array([0.0, 0.0, side * 0.18])  # (z, y, x)
        for _ in range(int(rng.integers(5, 8))):
            end = np.array([rng.uniform(-0.6, 0.7), rng.uniform(-0.45, 0.45), side * rng.uniform(0.3, 0.7)])
            vessels.append((hilum, end, rng.uniform(0.025, 0.045)))
    a["vessels"] = vessels
    return a


def _ct_lungs(z, y, x, a, edge):
    total = 0.0
    for side in (-1.0, 1.0):
        cx = side * a["lung_dx"] * a["bw"]
        r = np.sqrt(
            ((x - cx) / (a["lung_rx"] * a["bw"])) ** 2
            + (y / (a["lung_ry"] * a["bh"])) ** 2
            + ((z - a["lung_z"]) / a["lung_rz"]) ** 2
        )
        total = total + _sigmoid((1 - r) / edge) * _sigmoid((z - a["diaph"] - 0.25 * ((x - cx) / 0.3) ** 2) / edge)
    return np.clip(total, 0, 1)


def _render_nodule3d(cfg: SynthConfig, seed: int, *, klass: int, patient: int, view: int):
    S = cfg.size
    prng = np.random.default_rng([seed, 1, klass, patient])
    a = _ct_anatomy(prng)
    vrng = np.random.default_rng([seed, 2, klass, patient, view])
    z, y, x = (((np.arange(S) + 0.5) / S * 2 - 1) for _ in range(3))
    off = np.array([a["cz"], a["cy"], a["cx"]]) + vrng.uniform(-0.04, 0.04, size=3)
    z, y, x = np.meshgrid(*(v.astype(np.float32) for v in (z - off[0], y - off[1], x - off[2])), indexing="ij")
    edge = 2.0 / S

    rb = np.sqrt((x / a["bw"]) ** 2 + (y / a["bh"]) ** 2)
    body = _sigmoid((1 - rb) / edge)
    inner = _sigmoid((0.9 - rb) / edge)
    lung = _ct_lungs(z, y, x, a, edge)
    heart = _sigmoid(
        (
            1
            - np.sqrt(
                ((x - a["heart_x"]) / 0.28) ** 2 + ((y - a["heart_y"]) / 0.26) ** 2 + ((z - a["heart_z"]) / 0.35) ** 2
            )
        )
        / edge
    )
    spine = _sigmoid((0.09 - np.sqrt(x**2 + ((y - 0.78 * a["bh"]) / 1.0) ** 2)) / edge)
    phase = (z / a["rib_gap"]) + a["rib_phase"]
    ribs = _sigmoid((rb - 0.83) / edge) * _sigmoid((0.92 - rb) / edge) * (np.abs(phase - np.round(phase)) < 0.22)

    hu = -1000.0 + body * (1000 - 100) + inner * 140  # fat shell -100, soft tissue +40
    hu += lung * (-850 - 40) * (1 - heart)
    hu += lung * 35 * gaussian_filter(prng.normal(size=(S, S, S)), 1.5) * 3
    hu += spine * 360 + ribs * 500

    # vessels: soft tubes of blood density in the lungs (point-to-segment distance per voxel)
    ves = np.zeros_like(z)
    for p0, p1, r in a["vessels"]:
        seg = p1 - p0
        rz, ry, rx = z - p0[0], y - p0[1], x - p0[2]
        t = np.clip((rz * seg[0] + ry * seg[1] + rx * seg[2]) / (seg @ seg), 0, 1)
        d = np.sqrt((rz - t * seg[0]) ** 2 + (ry - t * seg[1]) ** 2 + (rx - t * seg[2]) ** 2)
        np.maximum(ves, _sigmoid((r * (1.2 - 0.6 * t) - d) / edge), out=ves)
    hu += ves * lung * (40 + 850) * 0.9

    mask = np.zeros((S, S, S), dtype=np.uint8)
    lesions: list[dict[str, Any]] = []
    if cfg.class_names[klass] == "nodule":
        L = cfg.lesions
        r = _u(prng, L.nodule_radius) * 2.0
        for _try in range(300):
            c = np.array([prng.uniform(-0.6, 0.7), prng.uniform(-0.5, 0.5), prng.uniform(-0.75, 0.75)])
            probes = [c] + [c + s * r * np.eye(3)[k] for k in range(3) for s in (-1, 1)]
            if all(float(_ct_lungs(*(np.array(q) for q in p), a, 0.02)) > 0.95 for p in probes):
                break
        contrast = _u(prng, L.nodule_contrast)
        d = np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2)
        solid = _sigmoid((r - d) / edge)
        hu = hu + solid * contrast * (30 - hu) * lung.clip(0.5, 1)
        mask = (d <= r).astype(np.uint8)
        lesions.append(
            dict(kind="nodule", z=float(c[0]), y=float(c[1]), x=float(c[2]), r=float(r), contrast=float(contrast))
        )

    hu += vrng.normal(0, _u(vrng, cfg.noise), size=hu.shape)
    hu = np.round(np.clip(hu, -1024, 3071))
    s_xy = 340.0 / S
    spacing = (1.25 * s_xy, s_xy, s_xy)
    return hu.astype(np.float32), mask, spacing, synthetic_affine((S, S, S), spacing), lesions


def synthetic_affine_lps(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """Voxel (d, h, w) -> patient **LPS** mm (DICOM): w runs right->left (+x), h anterior->posterior
    (+y), d inferior->superior (+z); the volume is centred on the origin (axial slices)."""
    sd, sh, sw = spacing
    A = np.zeros((4, 4))
    A[0, 2], A[1, 1], A[2, 0], A[3, 3] = sw, sh, sd, 1.0
    A[:3, 3] = [-(shape[2] - 1) / 2 * sw, -(shape[1] - 1) / 2 * sh, -(shape[0] - 1) / 2 * sd]
    return A


def synthetic_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """Voxel (d, h, w) -> **RAS** mm, the convention of ``Sample.affine`` across medlens
    (NIfTI and DICOM readers alike): :func:`synthetic_affine_lps` with x and y negated."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ synthetic_affine_lps(shape, spacing)
