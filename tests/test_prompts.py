"""Tests for xattn_video.prompts (suites, user files, offline lookup, fetching, selection)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from xattn_video.atomic import TMP_MARK
from xattn_video.prompts import SUITES, Prompt, PromptDataMissing, all_dimensions, load_prompts
from xattn_video.prompts import fetch as fetch_mod
from xattn_video.prompts import loader as loader_mod
from xattn_video.prompts.suites import DATA_FILES, VBENCH_COMMIT, VBENCH_NUM_PROMPTS

from ._vbench import SUBSET_INDICES, VBENCH_SUBSET_DIR, use_vbench_subset

VBENCH_DIR = VBENCH_SUBSET_DIR
_real_download = fetch_mod.download


N = len(SUBSET_INDICES)  # 44 prompts of 946, all 16 dimensions (tests/data/vbench_subset)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No user env dir, an empty private cache, downloads allowed but stubbed to fail loudly; the
    suite loader accepts the shipped 44-prompt subset."""
    monkeypatch.delenv(fetch_mod.ENV_PROMPTS_DIR, raising=False)
    monkeypatch.delenv(fetch_mod.ENV_OFFLINE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    use_vbench_subset(monkeypatch, env=False)

    def _no_network(spec):
        raise AssertionError(f"test tried to download {spec.name}")

    monkeypatch.setattr(fetch_mod, "download", _no_network)


def test_subset_is_an_excerpt_of_every_file() -> None:
    """The shipped files hold the same 44 prompts, in VBench's formats."""
    raw = json.loads((VBENCH_DIR / "VBench_full_info.json").read_text())
    assert len(raw) == N and raw[0]["prompt_en"] == "In a still frame, a stop sign"
    plain = (VBENCH_DIR / "all_dimension.txt").read_text().splitlines()
    assert plain == [e["prompt_en"] for e in raw]
    for name in ("all_dimension_longer.txt", "hunyuan_all_dimension.txt"):
        text = (VBENCH_DIR / name).read_text()
        assert len(text.split("\n")) == N and not text.endswith("\n")  # like the originals


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_suite_counts_and_indices(suite: str) -> None:
    prompts = load_prompts(suite, data_dir=VBENCH_DIR)
    assert len(prompts) == N
    assert [p.index for p in prompts] == list(range(N))
    assert all(isinstance(p, Prompt) and p.text and p.dimensions for p in prompts)


def test_suite_count_guard_is_946(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the test override the loader insists on VBench's 946 prompts."""
    monkeypatch.setattr(loader_mod, "VBENCH_NUM_PROMPTS", VBENCH_NUM_PROMPTS)  # the real one
    assert VBENCH_NUM_PROMPTS == 946
    with pytest.raises(ValueError, match=f"has {N} prompts, expected 946"):
        load_prompts("vbench", data_dir=VBENCH_DIR)


def test_standard_matches_source_and_augmented_pairs_dimensions() -> None:
    std = load_prompts("vbench", data_dir=VBENCH_DIR)
    raw = json.loads((VBENCH_DIR / "VBench_full_info.json").read_text())
    assert std[0].text == raw[0]["prompt_en"] == "In a still frame, a stop sign"
    assert std[0].dimensions == ("temporal_flickering",)
    assert [p.text for p in std] == [e["prompt_en"] for e in raw]
    assert [p.dimensions for p in std] == [tuple(e["dimension"]) for e in raw]
    longer_lines = (VBENCH_DIR / "all_dimension_longer.txt").read_text().split("\n")
    for suite in ("vbench-augmented", "vbench-hunyuan"):
        aug = load_prompts(suite, data_dir=VBENCH_DIR)
        assert [p.dimensions for p in aug] == [p.dimensions for p in std]
        assert all(a.text != s.text for a, s in zip(aug, std, strict=True))
    aug = load_prompts("vbench-augmented", data_dir=VBENCH_DIR)
    # last line has no trailing newline and must not be lost or merged
    assert aug[-1].text == longer_lines[-1].strip() and aug[0].text.startswith("In a still frame")


def test_env_dir_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fetch_mod.ENV_PROMPTS_DIR, str(VBENCH_DIR))
    assert len(load_prompts("vbench-hunyuan")) == N


def test_env_dir_may_be_a_clone_of_vbench(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A VBench clone keeps the files in sub-folders; the lookup wanted them flat and tried to
    download (a user pointing the variable at their clone got a download error)."""
    clone = tmp_path / "VBench"
    for spec in DATA_FILES.values():
        (clone / spec.repo_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(VBENCH_DIR / spec.name, clone / spec.repo_path)
    monkeypatch.setenv(fetch_mod.ENV_PROMPTS_DIR, str(clone))
    for suite in SUITES:
        assert load_prompts(suite) == load_prompts(suite, data_dir=VBENCH_DIR)
    for spec in DATA_FILES.values():
        assert fetch_mod.locate_data_file(spec.name) == clone / spec.repo_path
    (clone / spec.name).write_text("flat")  # a flat file beside the clone's layout wins
    assert fetch_mod.locate_data_file(spec.name) == clone / spec.name


def test_dimension_filter() -> None:
    std = load_prompts("vbench", data_dir=VBENCH_DIR)
    scene = load_prompts("vbench", data_dir=VBENCH_DIR, dimension="scene")
    assert [p.index for p in scene] == [36, 37, 38, 39]  # VBench's 792, 814, 836, 858
    assert all("scene" in p.dimensions for p in scene)
    assert scene == [p for p in std if "scene" in p.dimensions]
    both = load_prompts("vbench-augmented", data_dir=VBENCH_DIR, dimension=["scene", "color"])
    expected = [p.index for p in std if {"scene", "color"} & set(p.dimensions)]
    assert [p.index for p in both] == expected and len(expected) > len(scene)
    assert len(all_dimensions(std)) == 16


def test_unknown_dimension_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="Unknown dimension") as exc:
        load_prompts("vbench", data_dir=VBENCH_DIR, dimension="sceen")
    assert "scene" in str(exc.value) and "human_action" in str(exc.value)


def test_sample_matches_paper_stride_and_keeps_indices() -> None:
    std = load_prompts("vbench-augmented", data_dir=VBENCH_DIR)
    s = load_prompts("vbench-augmented", data_dir=VBENCH_DIR, sample=10)
    assert s == std[:: N // 10][:10]
    assert [p.index for p in s[:3]] == [0, 4, 8]
    lim = load_prompts("vbench-augmented", data_dir=VBENCH_DIR, sample=10, limit=5)
    assert lim == s[:5]
    # dimension filter first, then sample, then limit; indices stay the suite's
    d = load_prompts("vbench", data_dir=VBENCH_DIR, dimension="color", sample=2, limit=1)
    color = [p for p in std if "color" in p.dimensions]
    assert len(color) == 4 and [p.index for p in d] == [color[0].index]
    d = load_prompts("vbench", data_dir=VBENCH_DIR, dimension="color", sample=2)
    assert [p.index for p in d] == [color[0].index, color[2].index]
    big = load_prompts("vbench", data_dir=VBENCH_DIR, dimension="color", sample=1000)
    assert len(big) == len(color)


def test_unknown_suite_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="Unknown prompt suite") as exc:
        load_prompts("vbench-longer")
    for name in SUITES:
        assert name in str(exc.value)


def test_invalid_sample_and_limit(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("a\nb\n")
    with pytest.raises(ValueError, match="sample"):
        load_prompts(f, sample=0)
    with pytest.raises(ValueError, match="limit"):
        load_prompts(f, limit=0)
    with pytest.raises(FileNotFoundError, match="missing.txt does not exist"):
        load_prompts(tmp_path / "missing.txt")
    (tmp_path / "folder.txt").mkdir()  # was "does not exist" too
    with pytest.raises(FileNotFoundError, match="folder.txt is a directory, not a file"):
        load_prompts(tmp_path / "folder.txt")


def test_user_txt_file(tmp_path: Path) -> None:
    f = tmp_path / "mine.txt"
    f.write_text("  a red fox running  \n\n\nsecond prompt\r\nthird, no newline")
    prompts = load_prompts(str(f))
    assert prompts == [
        Prompt(0, "a red fox running"),
        Prompt(1, "second prompt"),
        Prompt(2, "third, no newline"),
    ]
    assert load_prompts(f, limit=2) == prompts[:2]
    with pytest.raises(ValueError, match="no dimension tags"):
        load_prompts(f, dimension="scene")


def test_txt_lines_end_only_at_newlines(tmp_path: Path) -> None:
    """str.splitlines also split at U+2028, U+0085 and form feeds: 4 lines loaded as 7 prompts,
    shifting the indices (the run folders) of every prompt after them."""
    f = tmp_path / "odd.txt"
    lines = ["a cat\u2028on a mat", "a dog\x85running", "a page\x0cturning", "A bird flies"]
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert load_prompts(f) == [Prompt(i, text) for i, text in enumerate(lines)]
    f.write_bytes(b"one\rtwo\r\nthree\n")  # classic Mac, Windows and Unix line ends
    assert [p.text for p in load_prompts(f)] == ["one", "two", "three"]


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_a_text_file_that_is_not_utf8_is_named(tmp_path: Path, encoding: str) -> None:
    """A Latin-1 or UTF-16 (Notepad's "Unicode") file gave only the codec's message."""
    f = tmp_path / "caf\u00e9.txt"
    f.write_text("un caf\u00e9 au soleil\n", encoding=encoding)
    with pytest.raises(ValueError, match=r"caf\u00e9\.txt is not UTF-8 text .*save it as UTF-8"):
        load_prompts(f)


def test_a_byte_order_mark_is_not_part_of_the_first_prompt(tmp_path: Path) -> None:
    """Notepad saves UTF-8 with a BOM; read as plain UTF-8 the first prompt would start with an
    invisible U+FEFF, sent to the model and written to meta.json."""
    txt, js = tmp_path / "p.txt", tmp_path / "p.json"
    txt.write_text("\ufeffa cat\nb\n", encoding="utf-8")
    js.write_text('\ufeff["a cat", "b"]', encoding="utf-8")
    assert load_prompts(txt) == load_prompts(js) == [Prompt(0, "a cat"), Prompt(1, "b")]


def test_a_byte_order_mark_inside_a_text_file_is_not_a_prompt(tmp_path: Path) -> None:
    """Two files joined with cat: the second's BOM stayed in its first prompt, and a line of
    only a BOM became an invisible prompt taking an index."""
    f = tmp_path / "p.txt"
    f.write_text("a red car\n\ufeffa blue boat\n\ufeff\nc\n", encoding="utf-8")
    assert load_prompts(f) == [Prompt(0, "a red car"), Prompt(1, "a blue boat"), Prompt(2, "c")]


def test_a_null_prompt_en_falls_back_to_prompt(tmp_path: Path) -> None:
    """A spreadsheet export writes null for an empty column: it hid "prompt" and the error
    said the entry had no string 'prompt'."""
    f = tmp_path / "p.json"
    f.write_text(json.dumps([{"prompt_en": None, "prompt": "a cat"}, {"prompt_en": "b"}]))
    assert load_prompts(f) == [Prompt(0, "a cat"), Prompt(1, "b")]


def test_a_blank_prompt_en_and_a_null_dimension_are_empty_columns_too(tmp_path: Path) -> None:
    """Only a null prompt_en fell back to "prompt": a blank one failed the file as "an empty
    prompt", and a null "dimension" failed it as not a string or a list."""
    f = tmp_path / "p.json"
    f.write_text(json.dumps([{"prompt_en": " ", "prompt": "a cat", "dimension": None},
                             {"prompt_en": "b", "dimension": "scene"}]))  # fmt: skip
    assert load_prompts(f) == [Prompt(0, "a cat"), Prompt(1, "b", ("scene",))]
    f.write_text(json.dumps([{"prompt_en": "  "}]))  # blank and nothing else: said as such
    with pytest.raises(ValueError, match="entry 0 has an empty prompt"):
        load_prompts(f)
    f.write_text(json.dumps([{"prompt": "a", "dimension": 0}]))
    with pytest.raises(ValueError, match="'dimension' must be a string or a list of strings"):
        load_prompts(f)


def test_the_suite_file_may_carry_a_byte_order_mark(tmp_path: Path) -> None:
    """Every prompt file was read as utf-8-sig but the standard one: a VBench_full_info.json
    re-saved with a BOM was called a cut or damaged copy."""
    for spec in DATA_FILES.values():
        shutil.copy(VBENCH_DIR / spec.name, tmp_path / spec.name)
    info = tmp_path / "VBench_full_info.json"
    info.write_text("\ufeff" + info.read_text(encoding="utf-8"), encoding="utf-8")
    assert load_prompts("vbench", data_dir=tmp_path) == load_prompts("vbench", data_dir=VBENCH_DIR)


@pytest.mark.parametrize("where", ["data_dir", "env"])
@pytest.mark.parametrize("bad", ["missing", "file"])
def test_a_prompts_folder_that_is_not_one_is_refused(monkeypatch, tmp_path, where, bad) -> None:
    """A typo in --prompts-dir / $XATTN_VIDEO_PROMPTS_DIR, or the JSON file's own path, was
    skipped without a word: the suite came from the cache or a download instead."""
    path = tmp_path / "no_such_dir"
    if bad == "file":
        path = tmp_path / "VBench_full_info.json"
        shutil.copy(VBENCH_DIR / path.name, path)
    kw = {"data_dir": path} if where == "data_dir" else {}
    if where == "env":
        monkeypatch.setenv(fetch_mod.ENV_PROMPTS_DIR, str(path))
    kind = "a file" if bad == "file" else "not found"
    with pytest.raises(ValueError, match=rf"{path.name} is not a directory \({kind}\)"):
        load_prompts("vbench", **kw)


def test_json_prompt_with_a_lone_surrogate_is_refused(tmp_path: Path) -> None:
    """Half an emoji passed the loader and crashed the tokenizer after run.json was written."""
    f = tmp_path / "s.json"
    f.write_text('["fine", "a cat \\ud83d on the grass"]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"s\.json: entry 1 is not valid Unicode text"):
        load_prompts(f)
    f.write_text('["a cat \\ud83d\\ude00 on the grass"]', encoding="utf-8")  # a whole emoji
    assert load_prompts(f) == [Prompt(0, "a cat \U0001f600 on the grass")]


def test_user_json_files(tmp_path: Path) -> None:
    strings = tmp_path / "s.json"
    strings.write_text(json.dumps(["one", "two"]))
    assert load_prompts(strings) == [Prompt(0, "one"), Prompt(1, "two")]

    objs = tmp_path / "o.json"
    objs.write_text(
        json.dumps(
            [
                {"prompt": "a cat", "dimension": "animal"},
                {"prompt_en": "a dog", "dimension": ["animal", "scene"]},
                {"prompt": "a car"},
                {"prompt": "short", "prompt_en": "the English one", "dimension": "a,b"},
            ]
        )
    )
    prompts = load_prompts(objs)
    assert prompts[0] == Prompt(0, "a cat", ("animal",))  # one dimension given as a string
    assert prompts[1] == Prompt(1, "a dog", ("animal", "scene"))
    assert prompts[2].dimensions == ()
    assert prompts[3] == Prompt(3, "the English one", ("a,b",))  # prompt_en wins; one tag
    assert [p.index for p in load_prompts(objs, dimension="scene")] == [1]

    for name, content in [("blank.txt", "\n  \n"), ("empty.json", "[]")]:
        (tmp_path / name).write_text(content)
        with pytest.raises(ValueError, match=f"{name} holds no prompts"):
            load_prompts(tmp_path / name)

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"text": "x"}]))
    with pytest.raises(ValueError, match="entry 0"):
        load_prompts(bad)
    notalist = tmp_path / "obj.json"
    notalist.write_text(json.dumps({"prompts": ["x"]}))
    with pytest.raises(ValueError, match="JSON list"):
        load_prompts(notalist)


def test_vbench_format_as_user_json(tmp_path: Path) -> None:
    f = tmp_path / "custom_info.json"
    shutil.copy(VBENCH_DIR / "VBench_full_info.json", f)
    assert load_prompts(f, dimension="scene") == load_prompts(
        "vbench", data_dir=VBENCH_DIR, dimension="scene"
    )


def test_missing_offline_file_error_names_file_url_and_env(tmp_path: Path) -> None:
    with pytest.raises(PromptDataMissing) as exc:
        load_prompts("vbench-augmented", data_dir=tmp_path)
    msg = str(exc.value)
    # the standard list (from the wheel) is looked up first
    assert "VBench_full_info.json" in msg and "vbench==0.1.5" in msg
    assert "XATTN_VIDEO_PROMPTS_DIR" in msg and str(tmp_path) in msg
    assert isinstance(exc.value, FileNotFoundError)


def test_missing_augmented_file_error_names_raw_url(tmp_path: Path) -> None:
    shutil.copy(VBENCH_DIR / "VBench_full_info.json", tmp_path)
    with pytest.raises(PromptDataMissing) as exc:
        load_prompts("vbench-hunyuan", data_dir=tmp_path)
    msg = str(exc.value)
    assert "hunyuan_all_dimension.txt" in msg
    assert f"raw.githubusercontent.com/Vchitect/VBench/{VBENCH_COMMIT}/prompts/" in msg
    assert "XATTN_VIDEO_PROMPTS_DIR" in msg


def test_fetch_path_downloads_verifies_and_caches(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The fetch path with the network stubbed: bytes are hash-checked, cached atomically, reused.
    (The stub serves the subset, so the pinned sha256 of each file is replaced by the subset's.)"""
    calls: list[str] = []

    def fake_download(spec):
        calls.append(spec.name)
        return (VBENCH_DIR / spec.name).read_bytes()

    for name, spec in list(DATA_FILES.items()):
        digest = hashlib.sha256((VBENCH_DIR / name).read_bytes()).hexdigest()
        monkeypatch.setitem(fetch_mod.DATA_FILES, name, dataclasses.replace(spec, sha256=digest))
    monkeypatch.setattr(fetch_mod, "download", fake_download)
    prompts = load_prompts("vbench-augmented")
    assert len(prompts) == N
    assert sorted(calls) == ["VBench_full_info.json", "all_dimension_longer.txt"]
    cache = tmp_path / "xdg-cache" / "xattn-video" / "prompts"
    assert fetch_mod.cache_dir() == cache
    for name in calls:
        data = (cache / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == fetch_mod.DATA_FILES[name].sha256
    assert not [p for p in cache.iterdir() if TMP_MARK in p.name]  # no temporary left
    # second load is served from the cache: no more downloads
    assert load_prompts("vbench-augmented") == prompts
    assert len(calls) == 2


def test_explicit_dir_wins_over_env_and_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    (env_dir / "VBench_full_info.json").write_text("[]")  # would fail the count check
    monkeypatch.setenv(fetch_mod.ENV_PROMPTS_DIR, str(env_dir))
    assert len(load_prompts("vbench", data_dir=VBENCH_DIR)) == N
    with pytest.raises(ValueError, match=f"expected {N}"):
        load_prompts("vbench")


def test_a_stale_env_dir_does_not_fail_a_run_whose_prompts_dir_has_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--prompts-dir is searched first: a $XATTN_VIDEO_PROMPTS_DIR that no longer exists is
    only an error when the search reaches it (it failed the run before --prompts-dir was
    even searched)."""
    monkeypatch.setenv(fetch_mod.ENV_PROMPTS_DIR, str(tmp_path / "gone"))
    assert len(load_prompts("vbench", data_dir=VBENCH_DIR)) == N
    with pytest.raises(ValueError, match="XATTN_VIDEO_PROMPTS_DIR .*gone is not a directory"):
        load_prompts("vbench", data_dir=tmp_path)  # searched, no file there: the variable next


def test_an_unwritable_prompt_cache_is_named_before_any_download(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A cache that cannot take the file (XDG_CACHE_HOME a file, or read-only): one error
    naming it and the fix, before the download. It was a traceback after the download, and
    every run downloaded again."""
    calls: list[str] = []
    monkeypatch.setattr(fetch_mod, "download", lambda spec: calls.append(spec.name) or b"")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    with pytest.raises(fetch_mod.PromptDataMissing) as exc:
        load_prompts("vbench")
    assert "the prompt cache" in str(exc.value) and "cannot take it" in str(exc.value)
    assert "set XDG_CACHE_HOME to a writable folder" in str(exc.value)
    assert "--prompts-dir" in str(exc.value) and calls == []


def test_fetch_rejects_wrong_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_mod, "download", lambda spec: b"[]")
    with pytest.raises(PromptDataMissing, match="sha256"):
        load_prompts("vbench")
    assert not (fetch_mod.cache_dir() / "VBench_full_info.json").exists()


def test_augmented_count_mismatch_is_an_error(tmp_path: Path) -> None:
    info = [{"prompt_en": f"p{i}", "dimension": ["scene"]} for i in range(N)]
    (tmp_path / "VBench_full_info.json").write_text(json.dumps(info))
    (tmp_path / "all_dimension_longer.txt").write_text("\n".join(f"long {i}" for i in range(N - 1)))
    with pytest.raises(ValueError, match=f"{N - 1} prompts"):
        load_prompts("vbench-augmented", data_dir=tmp_path)
    (tmp_path / "all_dimension_longer.txt").write_text("\n".join(f"long {i}" for i in range(N)))
    got = load_prompts("vbench-augmented", data_dir=tmp_path, limit=2)
    assert got == [Prompt(0, "long 0", ("scene",)), Prompt(1, "long 1", ("scene",))]


@pytest.mark.parametrize("text", ['[{"prompt_en": "a cat", "dimension"', ""])
def test_a_cut_standard_file_is_named_with_the_fix(tmp_path: Path, text: str) -> None:
    """A truncated or empty VBench_full_info.json (a cut download in the cache) said only
    "Expecting ',' delimiter: line 1 column ..." without naming the file."""
    (tmp_path / "VBench_full_info.json").write_text(text)
    with pytest.raises(ValueError, match="VBench_full_info.json is not valid JSON .*Delete it"):
        load_prompts("vbench", data_dir=tmp_path)


def test_prompt_is_frozen() -> None:
    p = Prompt(3, "x", ("scene",))
    with pytest.raises(AttributeError):
        p.text = "y"  # type: ignore[misc]
    with pytest.raises(ValueError):
        Prompt(-1, "x")


def test_offline_env_forbids_the_download(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fetch_mod.ENV_OFFLINE, "1")  # the autouse stub would fail if it downloaded
    with pytest.raises(PromptDataMissing, match="XATTN_VIDEO_OFFLINE forbids") as exc:
        load_prompts("vbench")
    assert "vbench==0.1.5" in str(exc.value) and "XATTN_VIDEO_PROMPTS_DIR" in str(exc.value)


def test_wheel_member_fetch_runs_pip_download_without_installing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The standard list comes out of the pinned vbench wheel: pip (stubbed) downloads it, nothing
    is installed, and the member is read from the zip."""
    payload = (VBENCH_DIR / "VBench_full_info.json").read_bytes()
    seen = []

    def fake_run(cmd, **kwargs):
        seen.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "vbench-0.1.5-py3-none-any.whl", "w") as zf:
            zf.writestr("vbench/VBench_full_info.json", payload)
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(fetch_mod.subprocess, "run", fake_run)
    monkeypatch.setattr(fetch_mod, "download", _real_download)
    assert fetch_mod.download(DATA_FILES["VBench_full_info.json"]) == payload
    (cmd,) = seen
    assert cmd[1:4] == ["-m", "pip", "download"] and "vbench==0.1.5" in cmd
    assert "--no-deps" in cmd and "install" not in cmd

    def failing_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: network down")

    monkeypatch.setattr(fetch_mod.subprocess, "run", failing_run)
    with pytest.raises(PromptDataMissing, match="network down") as exc:
        load_prompts("vbench")
    # the command as one types it (it read "`-m pip download ...`")
    assert "`pip download vbench==0.1.5 --no-deps" in str(exc.value)


@pytest.mark.parametrize("suffix", [".txt", ".json"])
def test_an_unreadable_prompt_file_is_a_value_error_naming_it(tmp_path, monkeypatch, suffix):
    """No permission (or an I/O error) reading a prompt file: the CLI's one-line error, not a
    PermissionError traceback (root ignores chmod here, so the read is made to fail)."""
    path = tmp_path / f"p{suffix}"
    path.write_text("a cat\n" if suffix == ".txt" else '["a cat"]', encoding="utf-8")

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", denied)
    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(ValueError, match=rf"Prompt file .*p\{suffix} cannot be read: Permission"):
        load_prompts(str(path))


def test_a_prompt_path_that_exists_but_is_no_file_is_not_called_missing(tmp_path):
    """A named pipe (or socket) that exists was reported as "does not exist"."""
    import os

    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    with pytest.raises(FileNotFoundError, match="fifo.txt is not a regular file"):
        load_prompts(str(fifo))


def test_a_json_prompt_keeps_no_byte_order_mark_a_txt_line_would_lose(tmp_path):
    """The same prompts from a .txt and a .json file are the same texts (compare pairs them by
    text): a BOM inside a JSON string was kept."""
    txt, js = tmp_path / "p.txt", tmp_path / "p.json"
    txt.write_text("\ufeffa dog\n", encoding="utf-8")
    js.write_text('["\\ufeffa dog"]', encoding="utf-8")
    assert [p.text for p in load_prompts(str(js))] == [p.text for p in load_prompts(str(txt))]
    assert load_prompts(str(js))[0].text == "a dog"


def test_an_unreadable_vbench_info_file_is_a_value_error_naming_it(monkeypatch):
    """The suite's VBench_full_info.json unreadable (no permission): a PermissionError
    traceback before; now the CLI's one-line error naming the file."""
    real_open = Path.open

    def open_(self, *a, **k):
        if self.name == "VBench_full_info.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *a, **k)

    monkeypatch.setattr(Path, "open", open_)
    with pytest.raises(ValueError, match=r"VBench_full_info\.json cannot be read: Permission"):
        load_prompts("vbench", data_dir=VBENCH_SUBSET_DIR)
