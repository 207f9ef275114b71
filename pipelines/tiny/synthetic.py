"""Synthetic training videos, generated in code: camera moves over photographs and moving sprites.

Every clip is a pure function of a :class:`Condition` (three integer "prompt" tokens), a seed
and the output size. The photographs are the colour (or colourised grey) images that ship
inside scikit-image's wheel (``skimage.data.astronaut`` etc., read from the installed package,
never downloaded). Four motion types:

- ``pan``: the camera window slides across the photo; ``direction`` d in 0..7 is the camera's
  heading at d * 45 degrees counter-clockwise from "right" (0 right, 2 up, 4 left, 6 down), so
  the content moves the opposite way;
- ``zoom``: the window shrinks (d even: zoom in) or grows (d odd: zoom out), geometrically;
- ``rotate``: the view turns about its centre (d even: the content turns counter-clockwise
  on screen; d odd: clockwise);
- ``sprite``: a textured disc or square (shape and texture picked by the seed) moves across a
  still view of the photo, heading d * 45 degrees (0 right, 2 up, ...).

The seed picks everything the condition does not say: speed, start position, view size, the
amount of zoom / rotation, sprite size, shape and texture. Clips are rendered in torch with one
batched ``F.grid_sample`` per source (photo, sprite texture), on any device, so training
batches are made on the GPU at a negligible cost.

``condition_from_prompt(text)`` maps ANY string to a condition so that text prompt suites
(VBench) can drive the tiny model: keyword matching on the lower-cased words (motion words such
as "pan", "zoom", "rotate", "ball"; subject words such as "cat", "coffee", "astronaut"; heading
words "left", "right", "up", "down", "in", "out", "clockwise"), and a SHA-256 hash of the text
for whatever no keyword decides. The text is never understood beyond that: the model only ever
sees the three tokens.

Not supported: non-integer / free-form conditions, camera shake, lighting changes, occlusion
between several sprites, more than the 8 bundled photos (``IMAGES``), frame sizes that are not
multiples of 2 for the tiny model (the generator itself takes any size >= 2).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DIRECTION_NAMES",
    "IMAGES",
    "MOTIONS",
    "NUM_DIRECTIONS",
    "TEXTURES",
    "Condition",
    "condition_from_prompt",
    "make_batch",
    "make_clip",
    "sample_batch",
    "sample_condition",
]

MOTIONS: tuple[str, ...] = ("pan", "zoom", "rotate", "sprite")
"""Motion types; ``Condition.motion`` indexes this tuple."""

# (name, skimage.data function, duotone (dark rgb, light rgb) for grey images or None)
_IMAGE_SPECS: tuple[tuple[str, str, tuple | None], ...] = (
    ("astronaut", "astronaut", None),
    ("coffee", "coffee", None),
    ("cat", "chelsea", None),
    ("rocket", "rocket", None),
    ("motorcycle", "stereo_motorcycle", None),
    ("galaxy", "hubble_deep_field", None),
    ("tissue", "immunohistochemistry", None),
    ("camera", "camera", ((0.10, 0.14, 0.32), (1.00, 0.86, 0.62))),
)
IMAGES: tuple[str, ...] = tuple(s[0] for s in _IMAGE_SPECS)
"""Source photos; ``Condition.image`` indexes this tuple."""

_TEXTURE_SPECS: tuple[tuple[str, str, tuple], ...] = (
    ("brick", "brick", ((0.30, 0.06, 0.04), (1.00, 0.55, 0.35))),
    ("grass", "grass", ((0.02, 0.18, 0.04), (0.70, 1.00, 0.35))),
    ("gravel", "gravel", ((0.05, 0.08, 0.25), (0.65, 0.85, 1.00))),
    ("coins", "coins", ((0.25, 0.15, 0.00), (1.00, 0.90, 0.30))),
)
TEXTURES: tuple[str, ...] = tuple(s[0] for s in _TEXTURE_SPECS)
"""Sprite textures (picked by the seed, not part of the condition)."""

NUM_DIRECTIONS = 8
DIRECTION_NAMES: tuple[str, ...] = (
    "right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right",
)  # fmt: skip
_TWO_WAY = {"zoom": ("in", "out"), "rotate": ("counter-clockwise", "clockwise")}
_SOURCE_OVERSAMPLE = 2.5  # source pixels per output pixel across a full-size view


@dataclass(frozen=True)
class Condition:
    """The model's "prompt": three integer tokens.

    motion: index into ``MOTIONS``; image: index into ``IMAGES``; direction: 0..7 (a heading
    for pan / sprite; only its parity matters for zoom (in / out) and rotate).
    """

    motion: int
    image: int
    direction: int

    def __post_init__(self) -> None:
        for name, n in (("motion", len(MOTIONS)), ("image", len(IMAGES))):
            if not 0 <= int(getattr(self, name)) < n:
                raise ValueError(f"{name} must be in [0, {n}), got {getattr(self, name)}")
        if not 0 <= int(self.direction) < NUM_DIRECTIONS:
            raise ValueError(f"direction must be in [0, {NUM_DIRECTIONS}), got {self.direction}")

    @property
    def motion_name(self) -> str:
        return MOTIONS[self.motion]

    def canonical(self) -> Condition:
        """The same clip distribution with zoom / rotate directions reduced to 0 or 1."""
        if self.motion_name in _TWO_WAY:
            return Condition(self.motion, self.image, self.direction % 2)
        return self

    def tokens(self) -> tuple[int, int, int]:
        """(motion, image, direction) of the canonical condition: what the model sees."""
        c = self.canonical()
        return (int(c.motion), int(c.image), int(c.direction))

    def describe(self) -> str:
        """Human-readable, e.g. ``"pan left over coffee"``."""
        m, img = self.motion_name, IMAGES[self.image]
        if m in _TWO_WAY:
            return f"{m} {_TWO_WAY[m][self.direction % 2]} on {img}"
        if m == "pan":
            return f"pan {DIRECTION_NAMES[self.direction]} over {img}"
        return f"sprite moving {DIRECTION_NAMES[self.direction]} over {img}"


def sample_condition(rng: np.random.Generator) -> Condition:
    """A uniformly random canonical condition (zoom / rotate directions 0 or 1)."""
    motion = int(rng.integers(len(MOTIONS)))
    image = int(rng.integers(len(IMAGES)))
    n_dir = 2 if MOTIONS[motion] in _TWO_WAY else NUM_DIRECTIONS
    return Condition(motion, image, int(rng.integers(n_dir)))


# ----------------------------------------------------------------------------------------------
# prompt text -> condition

_MOTION_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("zoom", ("zoom", "zooms", "zooming", "closer", "approaching", "dolly", "push")),
    ("rotate", ("rotate", "rotates", "rotating", "rotation", "spin", "spins", "spinning",
                "turn", "turns", "turning", "twirl", "twirling", "clockwise",
                "counterclockwise", "anticlockwise", "orbit", "orbiting")),
    ("pan", ("pan", "pans", "panning", "tracking", "track", "sweep", "sweeping", "tilt",
             "tilting")),
    ("sprite", ("ball", "balls", "sprite", "disc", "disk", "bouncing", "rolling", "floating",
                "flying", "running", "moving", "object", "drifting")),
)  # fmt: skip
_IMAGE_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("astronaut", ("astronaut", "astronauts", "spacesuit", "woman", "girl", "lady", "person",
                   "people")),
    ("coffee", ("coffee", "cup", "mug", "tea", "latte", "espresso", "drink", "cafe")),
    ("cat", ("cat", "cats", "kitten", "kitty", "pet", "dog", "puppy", "animal")),
    ("rocket", ("rocket", "rockets", "launch", "spaceship", "shuttle", "missile")),
    ("motorcycle", ("motorcycle", "motorbike", "bike", "bicycle", "car", "cars", "vehicle",
                    "street", "road", "traffic")),
    ("galaxy", ("galaxy", "galaxies", "star", "stars", "space", "universe", "cosmos",
                "nebula", "night", "sky")),
    ("tissue", ("cell", "cells", "tissue", "microscope", "microscopic", "biology", "bacteria")),
    ("camera", ("camera", "photographer", "tripod", "man", "men", "black", "white", "grey",
                "gray")),
)  # fmt: skip
_HEADING_WORDS = {
    "right": 0, "rightward": 0, "rightwards": 0, "east": 0,
    "up": 2, "upward": 2, "upwards": 2, "north": 2, "rising": 2,
    "left": 4, "leftward": 4, "leftwards": 4, "west": 4,
    "down": 6, "downward": 6, "downwards": 6, "south": 6, "falling": 6,
}  # fmt: skip


def _heading(words: list[str]) -> int | None:
    hits = [_HEADING_WORDS[w] for w in words if w in _HEADING_WORDS]
    if not hits:
        return None
    vertical = [h for h in hits if h in (2, 6)]
    horizontal = [h for h in hits if h in (0, 4)]
    if vertical and horizontal:  # "up and to the left" -> up-left
        return {(2, 0): 1, (2, 4): 3, (6, 4): 5, (6, 0): 7}[(vertical[0], horizontal[0])]
    return hits[0]


def condition_from_prompt(text: str) -> Condition:
    """Deterministic map from any prompt string to a :class:`Condition` (see module docstring).

    Motion: the first of zoom / rotate / pan / sprite whose keywords occur (in that order).
    Image: the first entry of ``IMAGES`` whose subject words occur. Direction: heading words
    for pan / sprite ("left", "up", "up ... left" -> up-left), "out" / "away" for zoom out,
    "clockwise" / "counter-clockwise" ("counterclockwise", "anti-clockwise" too) for the screen
    rotation (so ``condition_from_prompt(c.describe()) == c.canonical()``). Anything undecided
    comes from SHA-256 of the stripped, lower-cased text. Only these tokens reach the model.
    """
    norm = " ".join(str(text).lower().split())
    words = re.findall(r"[a-z]+", norm)
    wordset = set(words)
    digest = hashlib.sha256(norm.encode("utf-8")).digest()

    motion = next((MOTIONS.index(m) for m, kws in _MOTION_WORDS if wordset & set(kws)), None)
    if motion is None:
        motion = digest[0] % len(MOTIONS)
    image = next((IMAGES.index(i) for i, kws in _IMAGE_WORDS if wordset & set(kws)), None)
    if image is None:
        image = digest[1] % len(IMAGES)

    name = MOTIONS[motion]
    direction: int | None
    if name == "zoom":
        direction = (
            1
            if wordset & {"out", "away", "back", "receding", "pull"}
            else (0 if wordset & {"in", "closer", "approaching", "push"} else None)
        )
        n_dir = 2
    elif name == "rotate":
        ccw = re.search(r"\b(?:counter|anti)[\s-]?clockwise\b", norm) is not None
        cw = "clockwise" in wordset
        # the clip's direction 1 turns the content clockwise on screen
        direction = 0 if ccw else (1 if cw else None)
        n_dir = 2
    else:
        direction = _heading(words)
        n_dir = NUM_DIRECTIONS
    if direction is None:
        direction = digest[2] % n_dir
    return Condition(int(motion), int(image), int(direction))


# ----------------------------------------------------------------------------------------------
# sources


def _load_skimage(func: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, func)()
    if isinstance(img, tuple):  # stereo_motorcycle -> (left, right, disparity)
        img = img[0]
    return np.asarray(img)


def _to_rgb_float(img: np.ndarray, duotone: tuple | None) -> np.ndarray:
    x = img.astype(np.float32)
    x = x / (255.0 if img.dtype == np.uint8 else max(float(x.max()), 1.0))
    if x.ndim == 3 and x.shape[-1] == 4:
        x = x[..., :3]
    if x.ndim == 3 and duotone is not None:
        x = x.mean(-1)
    if x.ndim == 2:
        if duotone is None:
            x = np.repeat(x[..., None], 3, -1)
        else:
            lo, hi = (np.asarray(c, np.float32) for c in duotone)
            x = lo + x[..., None] * (hi - lo)
    return x


@lru_cache(maxsize=1)
def _master_sources() -> tuple[torch.Tensor, torch.Tensor]:
    """(photos (8, 3, 512, 512), textures (4, 3, 256, 256)) float32 in [0, 1], CPU, cached."""

    def prep(specs, size):
        out = []
        for _, func, duo in specs:
            x = torch.from_numpy(_to_rgb_float(_load_skimage(func), duo)).permute(2, 0, 1)
            h, w = x.shape[-2:]
            s = min(h, w)
            x = x[:, (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
            x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True)[0]
            out.append(x.clamp(0, 1))
        return torch.stack(out)

    return prep(_IMAGE_SPECS, 512), prep(_TEXTURE_SPECS, 256)


_SOURCE_CACHE: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _sources(out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Photos and textures resized for an output of ``out_size`` pixels, on ``device``."""
    size = int(min(512, max(16, math.ceil(out_size * _SOURCE_OVERSAMPLE / 8) * 8)))
    key = (size, str(device))
    if key not in _SOURCE_CACHE:
        photos, textures = _master_sources()
        tex_size = max(16, size // 2)
        photos = F.interpolate(photos, size=(size, size), mode="bilinear", antialias=True)
        textures = F.interpolate(textures, size=(tex_size, tex_size), mode="bilinear",
                                 antialias=True)  # fmt: skip
        _SOURCE_CACHE[key] = (photos.clamp(0, 1).to(device), textures.clamp(0, 1).to(device))
    return _SOURCE_CACHE[key]


# ----------------------------------------------------------------------------------------------
# motion parameters (numpy, per sample) -> geometry (torch, batched)


def _clip_params(cond: Condition, seed: int, frames: int) -> dict[str, np.ndarray]:
    """Per-frame camera (centre (T,2), half-size (T,), angle (T,)) and sprite parameters."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5EED])
    c = cond.canonical()
    m = c.motion_name
    s = np.linspace(-0.5, 0.5, frames) if frames > 1 else np.zeros(1)  # time, centred
    heading = c.direction * math.pi / 4
    u = np.array([math.cos(heading), -math.sin(heading)])  # screen: +x right, +y down
    angle = np.zeros(frames)
    sprite = np.zeros(6)  # active, cx, cy, vx, vy (total travel), radius; set below
    shape, texture = 0, 0
    if m == "pan":
        half = rng.uniform(0.42, 0.58)
        travel = rng.uniform(0.35, 0.6) * 2 * half  # in source units, 0.35-0.6 view widths
        room = 1.0 - half - travel / 2 * np.abs(u)
        c0 = rng.uniform(-1, 1, 2) * np.maximum(room, 0)
        centre = c0[None] + s[:, None] * travel * u[None]
        halfs = np.full(frames, half)
    elif m == "zoom":
        big = rng.uniform(0.62, 0.78)
        small = big / rng.uniform(1.6, 2.1)
        a, b = (big, small) if c.direction == 0 else (small, big)
        halfs = a * (b / a) ** (s + 0.5)
        centre = np.repeat(rng.uniform(-1, 1, (1, 2)) * (1.0 - big) * 0.9, frames, 0)
    elif m == "rotate":
        half = rng.uniform(0.4, 0.52)
        total = math.radians(rng.uniform(25, 50)) * (1 if c.direction == 0 else -1)
        angle = rng.uniform(-0.35, 0.35) + s * total
        centre = np.repeat(rng.uniform(-1, 1, (1, 2)) * (1.0 - half * math.sqrt(2)), frames, 0)
        halfs = np.full(frames, half)
    else:  # sprite over a still view
        half = rng.uniform(0.5, 0.68)
        centre = np.repeat(rng.uniform(-1, 1, (1, 2)) * (1.0 - half), frames, 0)
        halfs = np.full(frames, half)
        radius = rng.uniform(0.28, 0.42)
        travel = rng.uniform(0.9, 1.3)
        mid = rng.uniform(-0.2, 0.2, 2)
        sprite = np.array([1.0, mid[0], mid[1], travel * u[0], travel * u[1], radius])
        shape, texture = int(rng.integers(2)), int(rng.integers(len(TEXTURES)))
    return {
        "centre": centre.astype(np.float64),
        "half": halfs.astype(np.float64),
        "angle": angle.astype(np.float64),
        "sprite": sprite,
        "shape": np.array(shape),
        "texture": np.array(texture),
        "time": s,
    }


def make_batch(
    conditions: list[Condition],
    seeds: list[int],
    *,
    frames: int,
    height: int,
    width: int,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Render clips: (B, 3, T, H, W) float32 in [-1, 1] on ``device``.

    Clip b is a function of (conditions[b], seeds[b], frames, height, width) only.
    """
    if len(conditions) != len(seeds) or not conditions:
        raise ValueError("need one seed per condition and at least one condition")
    if frames < 1 or height < 2 or width < 2:
        raise ValueError(f"need frames >= 1 and height, width >= 2, got {frames}x{height}x{width}")
    device = torch.device(device)
    B, T, H, W = len(conditions), frames, height, width
    params = [_clip_params(c, s, T) for c, s in zip(conditions, seeds, strict=True)]
    photos, textures = _sources(max(H, W), device)

    def stack(key):
        return torch.as_tensor(np.stack([p[key] for p in params]), dtype=torch.float32,
                               device=device)  # fmt: skip

    centre, half, angle = stack("centre"), stack("half"), stack("angle")  # (B,T,2) (B,T) (B,T)
    sprite, time = stack("sprite"), stack("time")  # (B,6) (B,T)
    shape = torch.as_tensor([int(p["shape"]) for p in params], device=device)
    tex_id = torch.as_tensor([int(p["texture"]) for p in params], device=device)
    img_id = torch.as_tensor([int(c.image) for c in conditions], device=device)

    # output pixel centres in screen units: x in [-1, 1] over the width, square pixels
    aspect = H / W
    xs = (torch.arange(W, device=device, dtype=torch.float32) + 0.5) / W * 2 - 1
    ys = ((torch.arange(H, device=device, dtype=torch.float32) + 0.5) / H * 2 - 1) * aspect
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W)

    # camera: source = centre + half * R(angle) @ screen
    cos, sin = torch.cos(angle)[..., None, None], torch.sin(angle)[..., None, None]
    hh = half[..., None, None]
    sx = centre[..., 0, None, None] + hh * (cos * gx - sin * gy)
    sy = centre[..., 1, None, None] + hh * (sin * gx + cos * gy)
    grid = torch.stack([sx, sy], dim=-1).reshape(B, T * H, W, 2)
    video = F.grid_sample(photos[img_id], grid, mode="bilinear", padding_mode="reflection",
                          align_corners=False)  # fmt: skip
    video = video.reshape(B, 3, T, H, W)

    if bool((sprite[:, 0] > 0).any()):
        px = sprite[:, 1, None] + time * sprite[:, 3, None]  # (B, T)
        py = sprite[:, 2, None] + time * sprite[:, 4, None]
        r = sprite[:, 5].clamp_min(1e-3)[:, None, None, None]  # (B,1,1,1)
        lx = (gx - px[..., None, None]) / r  # (B, T, H, W) in sprite units
        ly = (gy - py[..., None, None]) / r
        disc = torch.sqrt(lx * lx + ly * ly) - 1.0
        square = torch.maximum(lx.abs(), ly.abs()) - 0.85
        sdf = torch.where(shape[:, None, None, None] == 1, square, disc) * r  # screen units
        pix = 2.0 / W
        alpha = (0.5 - sdf / pix).clamp(0, 1) * sprite[:, 0, None, None, None]
        tgrid = torch.stack([lx, ly], dim=-1).reshape(B, T * H, W, 2) * 0.9
        tex = F.grid_sample(textures[tex_id], tgrid, mode="bilinear", padding_mode="reflection",
                            align_corners=False).reshape(B, 3, T, H, W)  # fmt: skip
        shade = (1.0 - 0.25 * (lx * lx + ly * ly).clamp(0, 1))[:, None]  # a little relief
        a = alpha[:, None]
        video = video * (1 - a) + tex * shade * a
    return video.clamp(0, 1) * 2 - 1


def make_clip(cond: Condition, frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """One clip as (T, H, W, 3) uint8 (rendered on CPU)."""
    x = make_batch([cond], [seed], frames=frames, height=height, width=width)[0]
    x = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(1, 2, 3, 0).numpy()


def sample_batch(
    rng: np.random.Generator,
    batch: int,
    *,
    frames: int,
    height: int,
    width: int,
    device: str | torch.device = "cpu",
    clip_frames: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[Condition]]:
    """Random training batch: (video (B,3,T,H,W) in [-1,1], tokens (B,3) int64, conditions).

    Conditions and clip seeds are drawn from ``rng`` (so a seeded rng gives the same batch).
    clip_frames: render clips of this many frames and return a random window of ``frames``
    consecutive ones (short training clips with the per-frame motion of long ones).
    """
    conds = [sample_condition(rng) for _ in range(batch)]
    seeds = [int(x) for x in rng.integers(0, 2**31 - 1, size=batch)]
    total = frames if clip_frames is None else int(clip_frames)
    if total < frames:
        raise ValueError(f"clip_frames ({total}) must be >= frames ({frames})")
    video = make_batch(conds, seeds, frames=total, height=height, width=width, device=device)
    if total > frames:
        starts = rng.integers(0, total - frames + 1, size=batch)
        idx = torch.as_tensor(starts[:, None] + np.arange(frames)[None], device=video.device)
        video = torch.take_along_dim(video, idx[:, None, :, None, None], dim=2)
    tokens = torch.tensor([c.tokens() for c in conds], dtype=torch.long, device=device)
    return video, tokens, conds
