# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""Uploading a verified folder to the Hub, in one commit."""

from __future__ import annotations

from pathlib import Path

from embeddinggemma_tools.convert.common import ConversionError


def push_folder(folder: Path, repo_id: str, private: bool) -> str:
    """Uploads `folder` to the Hub repo `repo_id` (created if needed) with huggingface_hub; the token comes from the
    usual places (HF_TOKEN, `hf auth login`)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    operations = [
        CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p)) for p in files
    ]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.create_commit(
            repo_id, operations=operations, commit_message="Upload EmbeddingGemma model converted by embeddinggemma"
        )
    except Exception as error:
        raise ConversionError(
            f"Uploading to {repo_id!r} failed ({type(error).__name__}: {error}). The converted folder is complete in "
            f"{folder}; fix the token or repo id and upload it with `hf upload {repo_id} {folder}`."
        ) from error
    return getattr(commit, "commit_url", str(commit))
