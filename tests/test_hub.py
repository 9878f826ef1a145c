"""Model cards, and the Hub client's real upload (and download) code run against a local stand-in for the Hub.

`FakeHub` answers what huggingface_hub 2.4 requests: for uploads `create_repo`, README metadata validation,
`preupload` (regular or LFS per file), the LFS batch API with its PUT and verify, and the NDJSON `commit`; for
downloads the repo info (`revision`), the file list (`tree`) and HEAD/GET `resolve` of a file (which transformers'
and diffusers' `push_to_hub` also use to look for an existing card, and peft to read the base model's config); and
the agent-harness registry that huggingface_hub's user agent fetches.

The client runs in a subprocess (`python -m tests.test_hub`) whose environment points `HF_ENDPOINT` at the stand-in,
with a dummy `HF_TOKEN`: huggingface_hub reads its endpoint when it is imported. `HF_HUB_DISABLE_XET=1` too: with
`hf_xet` installed, huggingface_hub uploads LFS files through the Xet protocol (a binary content-addressed store,
chosen without asking the server), which the stand-in does not speak; the classic LFS path is what it serves.
"""

import base64
import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from peft import get_peft_model

from hydra_hf import HydraPipeline
from hydra_hf.hub import adapter_card, model_card, save_for_hub
from hydra_hf.lora import hydra_lora_config

from .utils import tiny_hydra, tiny_processor

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_dummy_token_for_tests"
REPOS = {
    "helper_model": "user/hydra-tiny",
    "helper_pipeline": "user/hydra-tiny-pipeline",
    "helper_adapter": "user/hydra-tiny-lora",
    "native_model": "user/native-model",
    "native_pipeline": "user/native-pipeline",
    "native_adapter": "user/native-lora",
}
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx")


# ------------------------------------------------------------------------------------------------ the fake Hub
def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """An in-memory Hub: repos of files, an LFS object store, and a log of requests."""

    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: dict[str, list[dict]] = defaultdict(list)
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, authorization
        self.unhandled: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _handler(hub):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, payload=None, headers: dict | None = None, body: bytes | None = None):
                if body is None:
                    body = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header(
                    "Content-Type", "application/json" if payload is not None else "application/octet-stream"
                )
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _route(self):
                path = urlsplit(self.path).path
                with hub.lock:
                    hub.requests.append((self.command, path, self.headers.get("Authorization")))
                body = self._body() if self.command in ("POST", "PUT") else b""
                for method, pattern, action in ROUTES:
                    match = re.fullmatch(pattern, path)
                    if match and self.command in method:
                        try:
                            return action(hub, self, body, *map(unquote, match.groups(default="")))
                        except Exception as error:  # noqa: BLE001 (a bug of the stand-in: reported, not raised)
                            with hub.lock:
                                hub.unhandled.append((self.command, path, repr(error)))
                            return self._send(500, {"error": repr(error)})
                with hub.lock:
                    hub.unhandled.append((self.command, path))
                self._send(404, {"error": f"fake Hub: no route for {self.command} {path}"})

            do_GET = do_HEAD = do_POST = do_PUT = _route

        return Handler

    # ---- endpoints (each answers like the Hub, with the fields huggingface_hub reads)
    def create_repo(self, handler, body, *_):
        payload = json.loads(body)
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        with self.lock:
            exists = repo_id in self.repos
            self.repos.setdefault(repo_id, {})
        status = 409 if exists else 200
        handler._send(
            status,
            {
                "url": f"{self.url}/{repo_id}",
                "name": repo_id,
                **({"error": "You already created this model repo"} if exists else {}),
            },
        )

    def validate_yaml(self, handler, body, *_):
        content = json.loads(body)["content"]
        errors = []
        if not content.startswith("---\n"):
            errors.append({"message": "README.md has no YAML metadata block"})
        else:
            yaml.safe_load(content.split("---\n")[1])
        handler._send(400 if errors else 200, {"errors": errors, "warnings": []})

    def preupload(self, handler, body, repo_id, revision):
        if repo_id not in self.repos:
            return handler._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        files = [
            {
                "path": f["path"],
                "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular",
                "shouldIgnore": False,
                "oid": None,
            }
            for f in json.loads(body)["files"]
        ]
        handler._send(200, {"files": files, "commitOid": "0" * 40})

    def lfs_batch(self, handler, body, repo_id):
        request = json.loads(body)
        assert request["operation"] == "upload" and "basic" in request["transfers"], request
        objects = []
        for obj in request["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs_objects:
                entry["actions"] = {
                    "upload": {"href": f"{self.url}/lfs-storage/{obj['oid']}", "header": {}},
                    "verify": {"href": f"{self.url}/lfs-verify", "header": {}},
                }
            objects.append(entry)
        handler._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def lfs_put(self, handler, body, oid):
        if hashlib.sha256(body).hexdigest() != oid:
            return handler._send(400, {"error": "sha256 mismatch"})
        with self.lock:
            self.lfs_objects[oid] = body
        handler._send(200, body=b"")

    def lfs_verify(self, handler, body, *_):
        request = json.loads(body)
        stored = self.lfs_objects.get(request["oid"])
        ok = stored is not None and len(stored) == request["size"]
        handler._send(200 if ok else 404, {"message": "ok" if ok else "object not found"})

    def commit(self, handler, body, repo_id, revision):
        if repo_id not in self.repos:
            return handler._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header, files = lines[0], dict(self.repos[repo_id])
        assert header["key"] == "header", header
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    return handler._send(
                        422, {"error": f"LFS object {value['oid']} of {value['path']} was never uploaded"}
                    )
                files[value["path"]] = self.lfs_objects[value["oid"]]
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                files = {
                    path: data for path, data in files.items() if not path.startswith(value["path"].rstrip("/") + "/")
                }
            else:
                return handler._send(400, {"error": f"unknown commit operation {key}"})
        oid = hashlib.sha1(body).hexdigest()
        with self.lock:
            self.repos[repo_id] = files
            self.commits[repo_id].append(
                {"oid": oid, "summary": header["value"]["summary"], "paths": [l["value"]["path"] for l in lines[1:]]}
            )
        handler._send(
            200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}
        )

    def repo_info(self, handler, body, repo_id, revision):
        if repo_id not in self.repos:
            return handler._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        commit = self.commits[repo_id][-1]["oid"] if self.commits[repo_id] else "0" * 40
        siblings = [{"rfilename": path, "size": len(data)} for path, data in sorted(self.repos[repo_id].items())]
        handler._send(200, {"id": repo_id, "modelId": repo_id, "sha": commit, "private": False, "siblings": siblings})

    def tree(self, handler, body, repo_id, revision, *_):
        if repo_id not in self.repos:
            return handler._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        entries, folders = [], set()
        for path, data in sorted(self.repos[repo_id].items()):
            folders.update("/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1))
            entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
            if path.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        entries += [{"type": "directory", "path": folder, "oid": "0" * 40} for folder in sorted(folders)]
        handler._send(200, entries)

    def agent_harnesses(self, handler, *_):
        handler._send(200, {"standardEnvVars": [], "harnesses": {}})  # the user-agent's registry: none known

    def resolve(self, handler, body, repo_id, revision, path):
        if repo_id not in self.repos:
            return handler._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        commit = self.commits[repo_id][-1]["oid"] if self.commits[repo_id] else "0" * 40
        data = self.repos[repo_id].get(path)
        if data is None:
            return handler._send(
                404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}
            )
        etag = hashlib.sha256(data).hexdigest()
        handler._send(200, headers={"ETag": f'"{etag}"', "X-Repo-Commit": commit}, body=data)


REPO = r"([\w.-]+/[\w.-]+)"
ROUTES = [
    (("POST",), r"/api/repos/create", FakeHub.create_repo),
    (("POST",), r"/api/validate-yaml", FakeHub.validate_yaml),
    (("POST",), rf"/api/models/{REPO}/preupload/([^/]+)", FakeHub.preupload),
    (("POST",), rf"/api/models/{REPO}/commit/([^/]+)", FakeHub.commit),
    (("POST",), rf"/{REPO}\.git/info/lfs/objects/batch", FakeHub.lfs_batch),
    (("PUT",), r"/lfs-storage/([0-9a-f]{64})", FakeHub.lfs_put),
    (("POST",), r"/lfs-verify", FakeHub.lfs_verify),
    (("GET",), rf"/api/models/{REPO}/revision/([^/]+)", FakeHub.repo_info),
    (("GET",), rf"/api/models/{REPO}/tree/([^/]+)(/.*)?", FakeHub.tree),
    (("GET",), r"/api/agent-harnesses", FakeHub.agent_harnesses),
    (("GET", "HEAD"), rf"/{REPO}/resolve/([^/]+)/(.+)", FakeHub.resolve),
]


# --------------------------------------------------------------------------------------- what gets pushed
def tiny_objects():
    """The model, processor, pipeline and LoRA model every push uses; deterministic, so the test process can
    rebuild them and compare with what the Hub received."""
    model, processor = tiny_hydra(), tiny_processor()
    pipeline = HydraPipeline(model=model, processor=processor)
    peft_model = get_peft_model(copy.deepcopy(model), hydra_lora_config(r=4))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    peft_model.peft_config["default"].base_model_name_or_path = "user/hydra-tiny"
    return model, processor, pipeline, peft_model


def helper_model_card() -> ModelCard:
    return model_card(
        REPOS["helper_model"],
        datasets=["user/shapes-world"],
        training_details={"recipe": "stages I-III on the shapes world", "steps": 10},
        eval_results={"GenEval overall": 0.5, "VQA accuracy": 0.25},
    )


def push_everything() -> None:
    """Run in the subprocess, against the fake Hub: our one-commit helper for each kind of repo, then the objects'
    own `push_to_hub` methods."""
    from hydra_hf import hub

    model, processor, pipeline, peft_model = tiny_objects()
    hub.push_to_hub(REPOS["helper_model"], model=model, processor=processor, card=helper_model_card())
    hub.push_to_hub(REPOS["helper_pipeline"], pipeline=pipeline)
    hub.push_to_hub(REPOS["helper_adapter"], model=peft_model)

    model.push_to_hub(REPOS["native_model"])
    processor.push_to_hub(REPOS["native_model"])
    model_card(REPOS["native_model"]).push_to_hub(REPOS["native_model"])
    pipeline.push_to_hub(REPOS["native_pipeline"])
    peft_model.push_to_hub(REPOS["native_adapter"])
    adapter_card(REPOS["native_adapter"], base_model="user/hydra-tiny").push_to_hub(REPOS["native_adapter"])


def download_everything() -> dict:
    """Run in the subprocess after `push_everything`: load the repos back from the fake Hub by id, as users would."""
    model, _, _, peft_model = tiny_objects()
    reference = model.state_dict()

    def same_weights(loaded) -> bool:
        return all(torch.equal(value, reference[name]) for name, value in loaded.state_dict().items())

    pipe = HydraPipeline(model=tiny_hydra(), processor=tiny_processor())
    ids = pipe.encode_prompt("a red square", do_classifier_free_guidance=False, device=torch.device("cpu"))[0]
    latents = torch.randn(1, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    pipe.load_lora_weights(REPOS["helper_adapter"], token=TOKEN, revision="main")
    with torch.no_grad():
        adapter_error = (
            (
                pipe.model.flow_velocity(latents, 0.5, input_ids=ids)
                - peft_model.flow_velocity(latents, 0.5, input_ids=ids)
            )
            .abs()
            .max()
        )
    return {
        "pipeline_repo": same_weights(HydraPipeline.from_pretrained(REPOS["helper_pipeline"]).model),
        "model_repo_as_pipeline": same_weights(HydraPipeline.from_pretrained(REPOS["helper_model"]).model),
        "adapter_repo_max_error": float(adapter_error),
    }


if __name__ == "__main__":
    push_everything()
    Path(sys.argv[1]).write_text(json.dumps(download_everything()))


# ----------------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The fake Hub after the subprocess pushed everything to it, and the subprocess's downloads from it."""
    results = tmp_path_factory.mktemp("downloads") / "results.json"
    with FakeHub() as fake:
        env = {
            **os.environ,
            "HF_ENDPOINT": fake.url,
            "HF_TOKEN": TOKEN,
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_XET": "1",
            "HF_HOME": str(tmp_path_factory.mktemp("hf_home")),
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "tests.test_hub", str(results)],
            check=False,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        print(f"pushes and downloads took {time.perf_counter() - start:.1f}s ({len(fake.requests)} requests)")
        assert result.returncode == 0, result.stderr[-4000:]
        fake.downloads = json.loads(results.read_text())
        yield fake


def received(hub: FakeHub, key: str, folder: Path) -> Path:
    """Write a received repo to disk, as a download would."""
    for path, data in hub.repos[REPOS[key]].items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    return folder


def local_files(tmp_path: Path, **objects) -> dict[str, bytes]:
    folder = save_for_hub(tmp_path / "local", **objects)
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def card_metadata(data: bytes) -> dict:
    return yaml.safe_load(data.decode().split("---\n")[1])


def test_every_request_was_authenticated_and_understood(hub):
    assert not hub.unhandled
    writes = [
        auth
        for _, path, auth in hub.requests
        if re.search(r"/repos/create$|/preupload/|/commit/|/lfs/objects/batch$", path)
    ]
    assert len(writes) > 20 and all(auth == f"Bearer {TOKEN}" for auth in writes)
    assert len(hub.commits[REPOS["helper_model"]]) == 1  # one repo, one commit


def test_helper_model_repo_is_complete_and_byte_identical(hub, tmp_path):
    model, processor, _, _ = tiny_objects()
    files = hub.repos[REPOS["helper_model"]]
    expected = local_files(tmp_path, model=model, processor=processor, card=helper_model_card())
    assert set(files) == set(expected)
    assert {"config.json", "generation_config.json", "model.safetensors", "README.md"} <= set(files)
    assert {"processor_config.json", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    for path in ("model.safetensors", "config.json", "generation_config.json", "processor_config.json", "README.md"):
        assert files[path] == expected[path], path  # the bytes that were written locally
    vocab = json.loads(files["tokenizer.json"])["model"]["vocab"]
    assert vocab == json.loads(expected["tokenizer.json"])["model"]["vocab"]
    metadata = card_metadata(files["README.md"])
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "any-to-any"
    assert metadata["license"] == "apache-2.0" and metadata["datasets"] == ["user/shapes-world"]
    assert "| VQA accuracy | 0.25 |" in files["README.md"].decode()


def test_helper_pipeline_repo_loads_through_every_front_door(hub, tmp_path):
    folder = received(hub, "helper_pipeline", tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "HydraPipeline"
    assert index["model"][0].startswith("hydra_hf") and index["model"][1] == "HydraForConditionalGeneration"
    assert {
        "model/model.safetensors",
        "model/config.json",
        "processor/tokenizer.json",
        "scheduler/scheduler_config.json",
    } <= set(hub.repos[REPOS["helper_pipeline"]])
    assert card_metadata((folder / "README.md").read_bytes())["library_name"] == "diffusers"

    from transformers import AutoModelForImageTextToText, AutoProcessor

    reference = tiny_hydra().state_dict()
    for model in (
        HydraPipeline.from_pretrained(folder).model,
        AutoModelForImageTextToText.from_pretrained(folder, subfolder="model"),
    ):
        assert all(torch.equal(value, reference[name]) for name, value in model.state_dict().items())
    assert (
        AutoProcessor.from_pretrained(folder, subfolder="processor").tokenizer.get_vocab()
        == tiny_processor().tokenizer.get_vocab()
    )


@pytest.mark.parametrize("key", ["helper_adapter", "native_adapter"])
def test_adapter_repo_holds_the_adapter_only_and_changes_a_pipeline(hub, key, tmp_path):
    files = hub.repos[REPOS[key]]
    assert set(files) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    metadata = card_metadata(files["README.md"])
    assert metadata["library_name"] == "peft" and metadata["base_model"] == "user/hydra-tiny"
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "user/hydra-tiny"

    pipe = HydraPipeline(model=tiny_hydra(), processor=tiny_processor())
    latents = torch.randn(1, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    ids = pipe.encode_prompt("a red square", do_classifier_free_guidance=False, device=torch.device("cpu"))[0]
    before = pipe.model.flow_velocity(latents, 0.5, input_ids=ids)
    pipe.load_lora_weights(received(hub, key, tmp_path))
    after = pipe.model.flow_velocity(latents, 0.5, input_ids=ids)
    assert (after - before).abs().max() > 1e-3


def test_repos_load_back_from_the_hub_by_id(hub):
    assert hub.downloads["pipeline_repo"] and hub.downloads["model_repo_as_pipeline"]
    assert hub.downloads["adapter_repo_max_error"] < 1e-5


def test_native_push_to_hub_methods_write_complete_repos(hub):
    model_files, pipeline_files = hub.repos[REPOS["native_model"]], hub.repos[REPOS["native_pipeline"]]
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "README.md"} <= set(
        model_files
    )
    assert card_metadata(model_files["README.md"])["pipeline_tag"] == "any-to-any"  # our card, pushed last
    assert {
        "model_index.json",
        "model/model.safetensors",
        "processor/tokenizer.json",
        "scheduler/scheduler_config.json",
        "README.md",
    } <= set(pipeline_files)
    assert (
        model_files["model.safetensors"]
        == pipeline_files["model/model.safetensors"]
        == hub.repos[REPOS["helper_model"]]["model.safetensors"]
    )


def test_cards_render_metadata_usage_and_eval_table():
    card = helper_model_card()
    assert card.data.library_name == "transformers" and "hydra" in card.data.tags
    text = str(card)
    assert 'HydraPipeline.from_pretrained("user/hydra-tiny")' in text and "AutoModelForImageTextToText" in text
    assert "| GenEval overall | 0.5 |" in text and "- **steps**: 10" in text

    assert "num_inference_steps=30, guidance_scale=5.0).images[0]" in text
    # None leaves guidance to the model's own defaults (its generation config): the snippet passes none.
    assert "num_inference_steps=30).images[0]" in str(model_card("user/m", guidance_scale=None))
    # a model that samples with answer guidance shows the prompt's questions, as Python the reader can paste
    asked = str(model_card("user/m", guidance_scale=None, prompt="a red circle",
                           guidance_questions=[("is there a red circle?", "yes")]))
    call = asked[asked.index("image = pipe(") : asked.index(".images[0]")]
    assert call.endswith("guidance_questions=[('is there a red circle?', 'yes')])")
    compile(call, "usage", "exec")

    pipeline_text = str(model_card("user/p", kind="pipeline"))
    assert 'subfolder="model"' in pipeline_text and "## Evaluation" not in pipeline_text

    adapter = adapter_card("user/lora", base_model="user/hydra-tiny", lora_config=hydra_lora_config(r=8))
    assert adapter.data.library_name == "peft" and adapter.data.base_model == "user/hydra-tiny"
    assert 'pipe.load_lora_weights("user/lora")' in str(adapter) and "- **rank**: 8" in str(adapter)
    with pytest.raises(ValueError, match="base_model"):
        model_card("user/lora", kind="adapter")


def test_staged_folder_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    from hydra_hf import hub
    from hydra_hf.hub import staged_folder

    target = tmp_path / "model"
    with staged_folder(target) as staging:
        (staging / "a.txt").write_text("new")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "new" and not staging.exists()
    with pytest.raises(ValueError, match="exists"):
        with staged_folder(target):
            pass
    with pytest.raises(RuntimeError):
        with staged_folder(target, replace=True) as staging:
            (staging / "b.txt").write_text("half")
            raise RuntimeError("failed while writing")
    assert [path.name for path in target.iterdir()] == ["a.txt"]  # untouched
    deletions, rmtree = [], hub.shutil.rmtree  # what `target` held whenever a folder was deleted
    monkeypatch.setattr(hub.shutil, "rmtree", lambda path, **kwargs: deletions.append(
        (Path(path).name, sorted(p.name for p in target.iterdir()) if target.exists() else None)) or rmtree(path, **kwargs))
    with staged_folder(target, replace=True) as staging:
        (staging / "b.txt").write_text("whole")
    assert [path.name for path in target.iterdir()] == ["b.txt"]
    assert deletions[-1] == ("model.replaced", ["b.txt"])  # the old model went only once the new one was in place
    assert all(held is not None for _, held in deletions) and not (tmp_path / "model.replaced").exists()
    target.rename(tmp_path / "model.replaced")  # as a crash between the two renames of a replace leaves it
    with pytest.raises(ValueError, match="exists"):  # the old model is back in place, so this is no new folder
        with staged_folder(target):
            pass
    assert [path.name for path in target.iterdir()] == ["b.txt"] and not (tmp_path / "model.replaced").exists()
