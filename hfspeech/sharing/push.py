"""Push a complete model directory to the Hugging Face Hub in one commit.

``push_model_directory(DIR, "user/name")`` checks the directory first (nothing is sent when a piece
is missing), then, with ``huggingface_hub.HfApi``: ``create_repo(exist_ok=True)`` and one
``create_commit`` holding every file of the directory plus the generated model card (README.md).
``from_pretrained("user/name")`` of the pushed repo gives back the model, the processor and, when
the directory has one, the LM decoder.

The endpoint is ``HF_ENDPOINT`` (read by huggingface_hub) unless ``endpoint`` is given; the token is
``token``, else the one huggingface_hub finds (``HF_TOKEN``, ``hf auth login``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .contents import CARD_FILE, ModelDirectory, inspect_model_directory
from .model_card import build_model_card

logger = logging.getLogger(__name__)


class PushError(RuntimeError):
    """The Hub refused or failed the push; the message says why and what to do."""


@dataclass
class PushResult:
    """Where the model went: repo URL, commit id and URL, and the uploaded paths."""

    repo_url: str
    commit_oid: str
    commit_url: str
    files: list[str]


def _http_error(error: BaseException):
    """The HfHubHTTPError behind ``error`` (LFS failures are wrapped in a RuntimeError), or None."""
    from huggingface_hub.errors import HfHubHTTPError

    while error is not None:
        if isinstance(error, HfHubHTTPError):
            return error
        error = error.__cause__ or error.__context__
    return None


def _explain(error: BaseException, repo_id: str, endpoint: str) -> PushError:
    http_error = _http_error(error)
    if http_error is None:
        return PushError(f"push of {repo_id} to {endpoint} failed: {error}")
    status = http_error.response.status_code
    detail = http_error.server_message or str(http_error).strip().splitlines()[0]
    namespace = repo_id.split("/")[0] if "/" in repo_id else "your user name"
    if status == 401:
        return PushError(
            f"the Hub at {endpoint} refused the push to {repo_id}: not authenticated (HTTP 401: {detail}). "
            "Pass a write token with --token (token=...), set HF_TOKEN, or run `hf auth login`.")
    if status == 403:
        return PushError(
            f"the Hub at {endpoint} refused the push to {repo_id}: the token may not write there (HTTP 403: "
            f"{detail}). Use a token with the write role for the namespace '{namespace}', or push to a repo of "
            "your own namespace.")
    if status == 404:
        return PushError(
            f"the Hub at {endpoint} does not know the repo {repo_id} or hides it from this token (HTTP 404: "
            f"{detail}). Check the repo id and that the token belongs to its owner.")
    return PushError(f"push of {repo_id} to {endpoint} failed with HTTP {status}: {detail}")


def prepare_push(model_dir: str | Path, repo_id: str) -> tuple[ModelDirectory, str]:
    """Check ``model_dir`` and build its card, without any network call.

    Returns:
        The inspected directory and the model card text.

    Raises:
        ValueError: ``repo_id`` is not ``namespace/name`` or ``name``.
        FileNotFoundError: the directory is missing or incomplete (every missing piece listed).
    """
    parts = repo_id.split("/")
    if not 1 <= len(parts) <= 2 or not all(parts) or any(part in (".", "..") for part in parts):
        raise ValueError(f"repo id {repo_id!r} must be 'namespace/name' (or 'name' for your own namespace).")
    model = inspect_model_directory(model_dir)
    if (model.path / CARD_FILE).is_file():
        logger.info("%s: the local %s is replaced by the generated model card.", model.path, CARD_FILE)
    return model, str(build_model_card(model, repo_id))


def push_model_directory(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Upload ``model_dir`` with a generated model card to the Hub repo ``repo_id`` (created if needed).

    Args:
        model_dir: a complete model directory (see :mod:`hfspeech.sharing.contents`).
        repo_id: ``namespace/name``.
        private: create the repo private (an existing repo keeps its visibility).
        token: Hub token with write access; default: the one huggingface_hub finds.
        commit_message: default "Upload <dir name> with hfspeech".
        endpoint: Hub URL; default ``HF_ENDPOINT`` or https://huggingface.co.

    Raises:
        FileNotFoundError: incomplete directory (raised before any network call).
        PushError: the Hub refused (401 without a valid token, 403 without write access) or failed.
    """
    import httpx2
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    model, card = prepare_push(model_dir, repo_id)
    api = HfApi(endpoint=endpoint, token=token)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(model.path / name)) for name in model.files]
    operations.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=card.encode("utf-8")))
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.create_commit(
            repo_url.repo_id, operations, repo_type="model",
            commit_message=commit_message or f"Upload {model.path.name} with hfspeech",
        )
    except (HfHubHTTPError, httpx2.HTTPError, RuntimeError, OSError) as error:
        raise _explain(error, repo_id, api.endpoint) from error
    logger.info("Pushed %d files of %s to %s (commit %s).", len(operations), model.path, repo_url, commit.oid)
    return PushResult(str(repo_url), commit.oid, commit.commit_url, [*model.files, CARD_FILE])
