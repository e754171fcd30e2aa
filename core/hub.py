"""The Hugging Face hub as a last resort: its local cache first, then the network only if it answers at once.

Without this, a model missing offline costs a minute of hub retries before any error. Callers turn ``HubError``
into their own message (which file to put where).
"""

import os
import urllib.error
import urllib.request
from typing import Optional

PROBE_SECONDS = 3.0  # a reachable hub answers a HEAD request well within this


class HubError(Exception):
    """The hub cannot give us a file: offline, unreachable, or the file is not there."""


def cached_file(repo_id: str, filename: str) -> Optional[str]:
    """The path of ``repo_id/filename`` in the local hub cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, filename)
    return path if isinstance(path, str) and os.path.isfile(path) else None


def unreachable() -> Optional[str]:
    """Why the hub cannot be used now (offline mode, or no answer within PROBE_SECONDS), or None if it answers."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=PROBE_SECONDS)
    except urllib.error.HTTPError:
        return None  # it answered, if only with an error page: the network is there
    except (OSError, ValueError) as error:  # URLError, timeouts and refused connections are OSErrors
        reason = getattr(error, "reason", None) or error
        return f"{constants.ENDPOINT} does not answer ({reason})"
    return None


def download(repo_id: str, filename: str) -> str:
    """The local path of ``repo_id/filename``: from the cache, else downloaded if the hub answers."""
    path = cached_file(repo_id, filename)
    if path:
        return path
    reason = unreachable()
    if reason:
        raise HubError(f"it is not in the Hugging Face cache and the hub cannot be reached: {reason}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError, RemoteEntryNotFoundError, RepositoryNotFoundError

    try:
        return hf_hub_download(repo_id, filename)
    except GatedRepoError:
        raise HubError(f"https://huggingface.co/{repo_id} is gated: accept its terms and log in first") from None
    except (RemoteEntryNotFoundError, RepositoryNotFoundError):
        raise HubError(f"https://huggingface.co/{repo_id} has no file {filename}") from None
    except OSError as error:  # network failures: huggingface_hub's HTTP and connection errors are OSErrors
        raise HubError(f"downloading {repo_id}/{filename} failed ({error})") from error
