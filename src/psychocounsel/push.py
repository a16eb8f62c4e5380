"""``psychocounsel push``: a run's preference pairs and models to the Hugging Face Hub.

What goes where (``plan``), with explicit allow lists, one commit per repo:

- the dataset repo: the pairs' parquet splits and dataset card (``RUN/pairs/*.parquet``,
  ``README.md``) at the repo's root, ``run.json`` and its ``config`` as ``config.yaml`` (local
  absolute paths cut to file names, credentials in URLs and secret-like keys dropped; and
  checked to hold no speech text), and ``report.html`` (ids, names and numbers only) unless
  ``--no-report``. The JSONL copies of the splits stay home: the Hub reads the parquet, and a
  second copy of each split would be loaded as more rows.
- a model repo: the model folder's top-level safetensors, JSON, tokenizer and card files. Pickles
  (``*.bin``, ``*.pt``, ``*.pkl``, ``training_args.bin``: loading one runs code) and anything else
  are never uploaded; the dry run names each file left out and why.

The token comes from ``HF_TOKEN`` or ``hf auth login`` and is only handed to ``HfApi``; the
endpoint from ``HF_ENDPOINT`` (read at call time, so tests can point it at a local fake).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import PushConfig
from .errors import UserError

log = logging.getLogger(__name__)

MODEL_FILES = ("*.safetensors", "*.json", "*.jinja", "*.txt", "*.model", "README.md")
PICKLES = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt")
# A key whose value may be a credential; the ``*_env`` keys hold the *name* of a variable.
SECRET_KEY = re.compile(r"(api_?key|token|secret|password|authorization)$", re.IGNORECASE)
ABSOLUTE_PATH = re.compile(r"^(?P<prefix>[A-Za-z_]+:)?(?P<path>/|~|[A-Za-z]:[\\/])")


@dataclass(frozen=True)
class Upload:
    """One file for one repo: from a local ``source`` file, or ``data`` made here."""

    repo_id: str
    repo_type: str  # "dataset" | "model"
    path_in_repo: str
    size: int
    source: Path | None = None
    data: bytes | None = None


@dataclass
class Plan:
    uploads: list[Upload]
    skipped: list[tuple[Path, str]]  # (local file, why it is not uploaded)

    def repos(self) -> list[tuple[str, str]]:
        """(repo_id, repo_type) in order of first upload."""
        return list(dict.fromkeys((u.repo_id, u.repo_type) for u in self.uploads))


def public_value(value: Any, key: str = "") -> Any:
    """``value`` (from run.json) with nothing private left: absolute local paths cut to their
    file name, a URL's credentials and query dropped, secret-like keys removed.

    >>> public_value({"input": "/home/ana/data/speeches.jsonl", "spec": "transformers:/srv/m/policy"})
    {'input': 'speeches.jsonl', 'spec': 'transformers:policy'}
    >>> public_value({"base_url": "https://user:pw@host:8000/v1?key=abc", "api_key": "sk-1", "api_key_env": "K"})
    {'base_url': 'https://host:8000/v1', 'api_key_env': 'K'}
    >>> public_value(["HuggingFaceTB/SmolLM2-135M", "runs/quickstart/report.html", 3, None])
    ['HuggingFaceTB/SmolLM2-135M', 'runs/quickstart/report.html', 3, None]
    """
    if isinstance(value, dict):
        return {
            k: public_value(v, k)
            for k, v in value.items()
            if not (SECRET_KEY.search(k) and not k.endswith("_env") and isinstance(v, str))
        }
    if isinstance(value, list):
        return [public_value(v, key) for v in value]
    if not isinstance(value, str):
        return value
    if "://" in value:
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(value)
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    match = ABSOLUTE_PATH.match(value)
    if match:
        return (match["prefix"] or "") + re.split(r"[\\/]", value.rstrip("/\\"))[-1]
    return value


def _strings(value: Any, where: str = ""):
    """(key path, string) of every string in a JSON value."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{where}.{k}" if where else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{where}[{i}]")
    elif isinstance(value, str):
        yield where, value


def check_no_speech_text(data: dict, run_dir: Path, probe: int = 50) -> None:
    """A UserError naming the key (never the text) if a string of run.json holds the opening
    ``probe`` characters of one of the run's speeches. Speeches are >= 100 characters (ingest's
    filter), so 50 characters of one cannot occur in a setting by chance."""
    speeches = run_dir / "speeches.jsonl"
    if not speeches.is_file():
        return
    long = [(where, s) for where, s in _strings(data) if len(s) >= probe]
    if not long:
        return
    with speeches.open(encoding="utf-8") as f:
        for line in f:
            try:
                text = json.loads(line).get("text") or ""
            except (ValueError, AttributeError):
                continue
            needle = text[:probe]
            for where, s in long if len(needle) == probe else ():
                if needle in s:
                    raise UserError(f"{run_dir / 'run.json'}: '{where}' holds a speech's text; not uploading it")


def _file(repo_id: str, repo_type: str, source: Path, path_in_repo: str | None = None) -> Upload:
    return Upload(repo_id, repo_type, path_in_repo or source.name, source.stat().st_size, source=source)


def _data(repo_id: str, path_in_repo: str, data: bytes) -> Upload:
    return Upload(repo_id, "dataset", path_in_repo, len(data), data=data)


def _dataset_uploads(cfg: PushConfig, skipped: list) -> list[Upload]:
    import yaml

    run, repo = cfg.run_dir, cfg.dataset_repo
    pairs, run_json = run / "pairs", run / "run.json"
    splits = sorted(pairs.glob("*.parquet")) if pairs.is_dir() else []
    if not splits:
        raise UserError(f"no pairs in {pairs} (train.parquet, test.parquet); run 'psychocounsel pairs' first")
    if not (pairs / "README.md").is_file():
        raise UserError(f"no dataset card {pairs / 'README.md'}; rerun 'psychocounsel pairs' to write it")
    if not run_json.is_file():
        raise UserError(f"no {run_json}; push a run directory made by 'psychocounsel run' or its stages")
    try:
        data = json.loads(run_json.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{run_json}: not JSON; the file is damaged") from None
    if not isinstance(data, dict):
        raise UserError(f"{run_json}: not a JSON object; the file is damaged")
    data = public_value(data)
    check_no_speech_text(data, run)
    uploads = [_file(repo, "dataset", pairs / "README.md")] + [_file(repo, "dataset", p) for p in splits]
    skipped += [(p, "JSONL copy of a parquet split") for p in sorted(pairs.glob("*.jsonl"))]
    uploads.append(_data(repo, "run.json", (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()))
    if isinstance(data.get("config"), dict):
        config = yaml.safe_dump(data["config"], sort_keys=False, allow_unicode=True)
        uploads.append(_data(repo, "config.yaml", config.encode()))
    report = run / "report.html"
    if cfg.report and report.is_file():
        uploads.append(_file(repo, "dataset", report))
    return uploads


def _model_uploads(folder: Path, repo_id: str, flag: str, skipped: list) -> list[Upload]:
    if not folder.is_dir():
        raise UserError(f"{flag} needs the model folder {folder}, which does not exist; train it first")
    uploads = []
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            skipped.append((path, "a folder (only the model folder's own files are uploaded)"))
        elif any(fnmatch.fnmatch(path.name, p) for p in PICKLES):
            skipped.append((path, "a pickle: loading it can run code; never uploaded"))
        elif any(fnmatch.fnmatch(path.name, p) for p in MODEL_FILES):
            uploads.append(_file(repo_id, "model", path))
        else:
            skipped.append((path, "not a model file"))
    if not any(u.path_in_repo.endswith(".safetensors") for u in uploads):
        raise UserError(f"no *.safetensors in {folder}; only safetensors weights are uploaded")
    return uploads


def plan(cfg: PushConfig) -> Plan:
    """What ``push`` uploads, checked: repo ids valid, the run's files there. Touches no network."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    for flag, repo_id in (
        ("--dataset-repo", cfg.dataset_repo),
        ("--model-repo", cfg.model_repo),
        ("--reward-model-repo", cfg.reward_model_repo),
    ):
        if repo_id is None:
            continue
        try:
            validate_repo_id(repo_id)
        except HFValidationError as e:
            raise UserError(f"{flag} '{repo_id}' is not a repo id: {str(e).splitlines()[0]}") from None
        if "/" not in repo_id:  # so that the dry run names the repo the upload goes to
            raise UserError(f"{flag} '{repo_id}' needs its owner: give USER/{repo_id} or ORG/{repo_id}")
    if cfg.model_repo and cfg.model_repo == cfg.reward_model_repo:
        raise UserError("--model-repo and --reward-model-repo must differ: both models have a model.safetensors")
    if not cfg.run_dir.is_dir():
        raise UserError(f"no such run directory: {cfg.run_dir}")
    skipped: list[tuple[Path, str]] = []
    uploads = _dataset_uploads(cfg, skipped)
    if cfg.model_repo:
        uploads += _model_uploads(cfg.run_dir / "policy", cfg.model_repo, "--model-repo", skipped)
    if cfg.reward_model_repo:
        uploads += _model_uploads(cfg.run_dir / "reward_model", cfg.reward_model_repo, "--reward-model-repo", skipped)
    return Plan(uploads, skipped)


def _size(n: int) -> str:
    """
    >>> _size(512), _size(2600), _size(538090408)
    ('512 B', '2.5 KiB', '513.2 MiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def describe(p: Plan, private: bool) -> str:
    """The dry run's listing: each repo, then each file with its path in the repo and size."""
    lines = []
    for repo_id, repo_type in p.repos():
        files = [u for u in p.uploads if u.repo_id == repo_id and u.repo_type == repo_type]
        total = sum(u.size for u in files)
        lines.append(
            f"{repo_type} {repo_id} ({'private' if private else 'public'}): {len(files)} files, {_size(total)}"
        )
        width = max(len(u.path_in_repo) for u in files)
        lines += [f"  {u.path_in_repo:<{width}}  {_size(u.size):>10}" for u in files]
    for path, why in p.skipped:
        lines.append(f"not uploaded: {path} ({why})")
    return "\n".join(lines)


def _hub_error(e: Exception, endpoint: str) -> UserError:
    """One line for an error of the Hub or the network (never a token: none is in either)."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(e, OfflineModeIsEnabled):
        return UserError("HF_HUB_OFFLINE is set: unset it to push (or use --dry-run)")
    if isinstance(e, HfHubHTTPError):
        status = e.response.status_code if e.response is not None else "?"
        hint = " (is the token valid, with write access?)" if status in (401, 403) else ""
        return UserError(f"the Hub at {endpoint} refused: HTTP {status}{hint}: {str(e).splitlines()[0][:200]}")
    return UserError(f"cannot reach the Hub at {endpoint} ({type(e).__name__}); check the network or HF_ENDPOINT")


def _transport_errors() -> tuple[type[Exception], ...]:
    try:  # huggingface_hub >= 2 speaks through httpx2, earlier versions through httpx
        import httpx2 as http
    except ImportError:
        import httpx as http
    return (http.TransportError, OSError)


def upload(p: Plan, private: bool) -> list[str]:
    """Create each repo (kept if it exists) and commit its files in one commit; the commit URLs."""
    from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    if constants.is_offline_mode():
        raise UserError("HF_HUB_OFFLINE is set: unset it to push (or use --dry-run)")
    token = get_token()
    if not token:
        raise UserError("no Hugging Face token: set HF_TOKEN or run 'hf auth login' (--dry-run needs none)")
    api = HfApi(endpoint=endpoint, token=token)
    urls = []
    try:
        for repo_id, repo_type in p.repos():
            api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
            operations = [
                CommitOperationAdd(u.path_in_repo, u.data if u.data is not None else str(u.source))
                for u in p.uploads
                if u.repo_id == repo_id and u.repo_type == repo_type
            ]
            log.info("%s %s: committing %d files", repo_type, repo_id, len(operations))
            info = api.create_commit(
                repo_id, operations, commit_message="Upload with psychocounsel push", repo_type=repo_type
            )
            urls.append(info.commit_url)
    except (HfHubHTTPError, *_transport_errors()) as e:
        raise _hub_error(e, endpoint) from None
    except ValueError as e:  # e.g. the Hub's check of a card's YAML metadata
        raise UserError(f"the Hub at {endpoint} refused the upload: {' '.join(str(e).split())[:300]}") from None
    return urls


def push(cfg: PushConfig) -> str:
    """Plan, then list (``dry_run``) or upload; returns what to print."""
    p = plan(cfg)
    if cfg.dry_run:
        return "dry run: nothing uploaded\n" + describe(p, cfg.private)
    urls = upload(p, cfg.private)
    return "\n".join(f"pushed {repo_type} {repo_id}: {url}" for (repo_id, repo_type), url in zip(p.repos(), urls))
