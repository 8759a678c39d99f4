"""Run folders that resume: an identity, and a marker per finished stage.

A run folder is identified by what made it: `identity.json` records every setting that changes a
result and a hash of the code (`code_version`). A re-run with the same identity resumes; one with
another identity stops before any work and names each differing setting (`force` redoes every stage).

Every stage writes its outputs atomically and then a marker `stages/<stage>.json` holding its result,
wall time and the hash of the identity it was computed under (`run_stage`). A re-run skips the stages
whose marker carries this run's hash, so an interrupted run resumes where it stopped. reproduce.py,
positions.py, sweep.py and sites.py build their folders this way; sweep and sites read a finished
reproduce folder (`read_base`) and the preset it was made with (`base_preset`).
"""

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

from nanobias import distributed
from nanobias.checkpoint import read_json, write_json
from nanobias.errors import UserError
from nanobias.progress import format_seconds


def code_version() -> str:
    """A hash of the package's source files: a run resumes only under the code that started it."""
    package = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def flat(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def preset_settings(preset) -> dict:
    """The preset's values as JSON, less `seeds` (a folder grows by RL seeds under one identity)."""
    return {k: v for k, v in json.loads(json.dumps(asdict(preset))).items() if k != "seeds"}


def run_hash(identity: dict) -> str:
    """The short hash a stage marker carries: the identity it was computed under."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def identity_problem(out: Path, identity: dict, force: bool) -> str | None:
    """Why `out` cannot take a run of `identity` (None: it can; then identity.json records it)."""
    path = out / "identity.json"
    if not force and path.is_file():
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return f"{path}: not JSON ({e}); delete it, or pass --force to redo every stage"
        if old != identity:
            now, was = flat(identity), flat(old)
            diff = [f"{k} {was.get(k, '(unset)')!r} -> {now.get(k, '(unset)')!r}"
                    for k in sorted(set(now) | set(was)) if now.get(k) != was.get(k)]
            return (f"{out} holds a run made with other settings: " + "; ".join(diff[:6])
                    + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
                    + ". Use another --out, or --force to redo every stage here")
    elif not force and list((out / "stages").glob("*.json")):
        return (f"{out} holds stages of a run with no record of its settings (identity.json): use another --out, "
                "or --force to redo every stage here")
    write_json(path, identity)
    return None


def run_stage(out: Path, name: str, fn, force: bool, every_rank: bool = False, identity: str = ""):
    """Run `fn()` unless `out/stages/<name>.json` says it finished under `identity`; return its JSON-able
    result. `every_rank`: a training stage, which every torchrun process runs (distributed.py)."""
    marker = out / "stages" / f"{name}.json"
    say = print if distributed.is_main() else lambda *a, **k: None

    def finished():
        if force or not marker.is_file():
            return None
        done = json.loads(marker.read_text())
        return done if done.get("identity") == identity else None

    done = distributed.from_main(finished)
    if done is not None:
        say(f"[{name}] already done ({format_seconds(done['seconds'])}), skipped", flush=True)
        return done["result"], done["seconds"]
    say(f"[{name}] start", flush=True)
    start = time.perf_counter()
    result = fn() if every_rank or distributed.is_main() else None
    seconds = time.perf_counter() - start
    write_json(marker, {"seconds": seconds, "result": result, "identity": identity})
    say(f"[{name}] done in {format_seconds(seconds)}", flush=True)
    return distributed.from_main(lambda: result), seconds


def seed_folder(out: Path, rl_seed: int, seed: int) -> tuple[Path, str]:
    """(folder of an RL seed's files, suffix of its stage markers): seed `seed` where a one-seed run puts
    them (out, ""), another in out/seed-S with markers stages/<stage>@seed-S.json."""
    return (out, "") if rl_seed == seed else (out / f"seed-{rl_seed}", f"@seed-{rl_seed}")


def read_base(base: Path, out: Path, stages: tuple) -> dict:
    """The identity of `base`, a `nanobias reproduce` folder whose `stages` finished, that a tool reads (never
    writes) to make `out` (sweep.py, sites.py); UserError naming what is missing."""
    what = "expected the folder of a finished `nanobias reproduce` run"
    if not base.is_dir():
        raise UserError(f"--base {base}: no such folder ({what})")
    if not (base / "identity.json").is_file():
        raise UserError(f"--base {base}: no identity.json ({what})")
    identity = read_json(base / "identity.json", "a run's identity, as `nanobias reproduce` writes it")
    if not isinstance(identity, dict) or "settings" not in identity or "data" not in identity:
        raise UserError(f"--base {base}: its identity.json has no settings and data ({what})")
    for stage in stages:
        try:
            done = json.loads((base / "stages" / f"{stage}.json").read_text()).get("identity") == run_hash(identity)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            done = False
        if not done:
            raise UserError(f"--base {base}: its {stage} stage has not finished; run `nanobias reproduce` there first")
    if out.resolve() == base.resolve() or base.resolve() in out.resolve().parents:
        raise UserError(f"--out {out}: inside --base {base}; the base run is only read, pass another folder")
    return identity


def base_preset(identity: dict, overrides: dict | None = None, flag: str = "--base"):
    """The preset a run was made with (its name and every value identity.json records), then `overrides`;
    UserError starting with `flag` where they make none."""
    from nanobias.presets import SECTIONS, current_value, get_preset, known_keys

    preset, values = get_preset(identity["preset"]), {}
    for k, v in identity["settings"].items():  # {"rl": {"steps": 10}} -> {"rl.steps": 10}; a dict value stays one
        values.update({f"{k}.{f}": x for f, x in v.items()} if k in SECTIONS else {} if k == "name" else {k: v})
    tuples = {k for k in known_keys() if isinstance(current_value(preset, k), tuple)}  # JSON made them lists
    values = {k: tuple(v) if k in tuples else v for k, v in values.items()}
    try:
        return get_preset(identity["preset"], {**values, **(overrides or {})})
    except (ValueError, TypeError) as e:
        raise UserError(f"{flag}: {e}") from None
