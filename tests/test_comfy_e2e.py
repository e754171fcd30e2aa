"""End to end in a real ComfyUI: start its server with this pack installed, run workflows, read the results back.

Runs when ``COMFYUI_DIR`` points to a ComfyUI checkout whose requirements are importable by this Python (or by
``COMFYUI_PYTHON``). The server runs on the CPU, listens on 127.0.0.1 only, in a throw-away base directory with
this pack linked into custom_nodes and the tiny test models in models/clip_interrogator; it is always stopped.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")

pytestmark = pytest.mark.skipif(
    not COMFYUI_DIR or not os.path.isfile(os.path.join(COMFYUI_DIR or "", "main.py")),
    reason="set COMFYUI_DIR to a ComfyUI checkout (with its requirements installed) to run the end-to-end test")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(url, data=None, timeout=10):
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(req, timeout=timeout) as response:
        raw = response.read()
    return json.loads(raw) if raw.strip() else None


def _workflow(names):
    """API format: 3 LoadImage -> 2 ImageBatch -> every node of the pack."""
    graph = {str(i + 1): {"class_type": "LoadImage", "inputs": {"image": name}} for i, name in enumerate(names)}
    graph["10"] = {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}}
    graph["11"] = {"class_type": "ImageBatch", "inputs": {"image1": ["10", 0], "image2": ["3", 0]}}
    graph["20"] = {"class_type": "ClipInterrogatorLoad", "inputs": {
        "clip_model": "tiny-clip.safetensors", "caption_model": "blip-large", "precision": "auto", "device": "auto",
        "vocabulary": "builtin", "artists": True, "ban": ""}}
    graph["21"] = {"class_type": "ClipInterrogatorInterrogate", "inputs": {
        "image": ["11", 0], "interrogator": ["20", 0], "mode": "fast", "max_flavors": 0, "caption": ""}}
    graph["22"] = {"class_type": "ClipInterrogatorStylePrompt", "inputs": {
        "image": ["11", 0], "interrogator": ["20", 0], "max_flavors": 0}}
    graph["23"] = {"class_type": "ClipInterrogatorNegativePrompt", "inputs": {
        "image": ["11", 0], "interrogator": ["20", 0], "max_flavors": 4}}
    graph["24"] = {"class_type": "ClipInterrogatorAnalyze", "inputs": {
        "image": ["11", 0], "interrogator": ["20", 0], "top": 5}}
    return graph


def _wait_for_server(base, proc, log_path, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ComfyUI exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            return _request(f"{base}/object_info/ClipInterrogatorInterrogate", timeout=5)
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(1)
    pytest.fail(f"ComfyUI did not answer within {timeout}s:\n{_tail(log_path)}")


def _wait_for_history(base, prompt_id, proc, log_path, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        history = _request(f"{base}/history/{prompt_id}")
        if history and prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            return history[prompt_id]
        if proc.poll() is not None:
            pytest.fail(f"ComfyUI exited with {proc.returncode}:\n{_tail(log_path)}")
        time.sleep(1)
    pytest.fail(f"the workflow did not finish within {timeout}s:\n{_tail(log_path)}")


def _tail(path, n=60):
    with open(path, "r", encoding="utf-8", errors="replace") as file:
        return "".join(file.readlines()[-n:])


WIDGET_KINDS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _widget_specs(info):
    """The widget inputs of a node in ComfyUI's order, from /object_info: (name, kind, options)."""
    specs = []
    for section in ("required", "optional"):
        declared = info["input"].get(section, {})
        for name in info.get("input_order", {}).get(section, list(declared)):
            kind, options = declared[name][0], (declared[name][1] if len(declared[name]) > 1 else {})
            if isinstance(kind, list):
                kind, options = "COMBO", dict(options, options=kind)
            if kind in WIDGET_KINDS and not options.get("forceInput"):
                specs.append((name, kind, options))
    return specs


def _check_example_workflow(path, object_info):
    """What the frontend needs to load a UI-format workflow: known node types, links between declared inputs
    and outputs of the right types, and our nodes' widget values in object_info's input order and range."""
    with open(path) as file:
        workflow = json.load(file)
    nodes = {n["id"]: n for n in workflow["nodes"]}
    missing = sorted({n["type"] for n in nodes.values()} - set(object_info))
    assert not missing, f"{os.path.basename(path)}: node types unknown to ComfyUI: {missing}"
    for link_id, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        source, target = nodes[src], nodes[dst]
        assert object_info[source["type"]]["output"][src_slot] == kind, (path, link_id)
        name = target["inputs"][dst_slot]["name"]
        declared = {k: v for section in object_info[target["type"]]["input"].values() for k, v in section.items()}
        assert name in declared, (path, link_id, target["type"], name)
        declared_kind = "COMBO" if isinstance(declared[name][0], list) else declared[name][0]
        assert declared_kind == kind, (path, link_id, target["type"], name, declared_kind)
    for node in nodes.values():
        if not node["type"].startswith("ClipInterrogator"):
            continue
        specs = _widget_specs(object_info[node["type"]])
        values = node["widgets_values"]
        assert len(values) == len(specs), (path, node["type"], values, [s[0] for s in specs])
        for value, (name, kind, options) in zip(values, specs):
            where = (path, node["type"], name, value)
            if kind == "COMBO":
                assert value in options["options"], where
            elif kind == "BOOLEAN":
                assert isinstance(value, bool), where
            elif kind == "STRING":
                assert isinstance(value, str), where
            else:
                assert isinstance(value, (int, float)) and not isinstance(value, bool), where
                assert options.get("min", value) <= value <= options.get("max", value), where


class Server:
    """A running ComfyUI: where it answers and the files it was started with."""

    def __init__(self, base, proc, log_path, base_dir, names):
        self.base, self.proc, self.log_path, self.base_dir, self.names = base, proc, log_path, base_dir, names
        self.models = base_dir / "models" / "clip_interrogator"

    def run(self, graph):
        """Queue ``graph`` and wait for its history entry."""
        queued = _request(f"{self.base}/prompt", {"prompt": graph, "client_id": "e2e-test"})
        return _wait_for_history(self.base, queued["prompt_id"], self.proc, self.log_path)

    def log(self, n=1000):
        return _tail(self.log_path, n)


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory):
    """One headless ComfyUI for this file's tests (starting one takes most of their time), always stopped."""
    from tests.tiny_models import sample_images, write_tiny_blip, write_tiny_clip

    tmp_path = tmp_path_factory.mktemp("e2e")
    base_dir = tmp_path / "comfy"
    models = base_dir / "models" / "clip_interrogator"
    os.makedirs(base_dir / "custom_nodes")
    os.makedirs(base_dir / "input")
    write_tiny_clip(str(models))
    write_tiny_blip(str(models / "blip-image-captioning-large"))
    os.symlink(ROOT, base_dir / "custom_nodes" / "comfyui-clip-interrogator-nodes")
    names = []
    for i, image in enumerate(sample_images()):
        names.append(f"sample{i}.png")
        image.resize((64, 64)).save(base_dir / "input" / names[-1])

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = str(tmp_path / "comfyui.log")
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                                 "--base-directory", str(base_dir), "--disable-auto-launch"],
                                cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        _wait_for_server(base, proc, log_path)
        yield Server(base, proc, log_path, base_dir, names)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.copy(log_path, os.environ["COMFYUI_E2E_LOG"]) if os.environ.get("COMFYUI_E2E_LOG") else None


@pytest.fixture(scope="module")
def engine(comfyui):
    """The engine the nodes build from Load Interrogator's defaults, run here directly."""
    from core import Interrogator, Vocabulary, load_captioner, load_clip

    clip = load_clip(weights=str(comfyui.models / "tiny-clip.safetensors"))
    return Interrogator(clip, load_captioner("blip-large", models_dir=str(comfyui.models)), Vocabulary.builtin())


def test_workflow_with_every_node_in_comfyui(comfyui, engine):
    base, names, models = comfyui.base, comfyui.names, comfyui.models
    info = _request(f"{base}/object_info/ClipInterrogatorInterrogate")
    node_info = info["ClipInterrogatorInterrogate"]
    assert node_info["output"] == ["STRING", "STRING"] and node_info["output_is_list"] == [True, True]
    load_info = _request(f"{base}/object_info/ClipInterrogatorLoad")["ClipInterrogatorLoad"]
    assert "tiny-clip.safetensors" in load_info["input"]["required"]["clip_model"][0]

    # the example workflows match this ComfyUI's node definitions (what its frontend loads them against)
    object_info = _request(f"{base}/object_info", timeout=60)
    examples = os.path.join(ROOT, "example_workflows")
    for name in sorted(os.listdir(examples)):
        if name.endswith(".json"):
            _check_example_workflow(os.path.join(examples, name), object_info)

    result = comfyui.run(_workflow(names))
    assert result["status"]["status_str"] == "success", json.dumps(result["status"], indent=1)
    outputs = result["outputs"]
    prompts = outputs["21"]["text"]
    assert len(prompts) == 3 and all(prompts) and len(set(prompts)) == 3
    for node_id in ("22", "23", "24"):
        assert len(outputs[node_id]["text"]) == 3 and all(outputs[node_id]["text"])

    # the same prompts as the engine writes for these images, run here directly
    from PIL import Image

    images = [Image.open(comfyui.base_dir / "input" / name).convert("RGB") for name in names]
    assert os.listdir(models / "cache")  # embedding caches live under models/clip_interrogator/cache
    assert engine.interrogate(images, "fast") == prompts

    released = lambda: comfyui.log().count("CLIP Interrogator: released")
    assert released() == 0  # nothing was evicted while the workflow ran
    _request(f"{base}/free", {"unload_models": True, "free_memory": True})
    deadline = time.time() + 30
    while released() < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert released() == 2, comfyui.log(60)  # CLIP and the caption model, with CLIP's label matrices

    # after /free the models come back on next use
    loads = comfyui.log().count("Requested to load _Holder")
    graph = _workflow(names)
    graph["21"]["inputs"]["max_flavors"] = 3  # a changed input, so ComfyUI runs the node again
    again = comfyui.run(graph)
    assert again["status"]["status_str"] == "success"
    shorter = again["outputs"]["21"]["text"]
    assert len(shorter) == 3 and all(p.startswith(s) and p != s for p, s in zip(prompts, shorter))
    assert comfyui.log().count("Requested to load _Holder") > loads


def test_caption_folder_in_comfyui(comfyui, engine, tmp_path):
    """Load Interrogator -> Caption Folder on a folder with a corrupt image and a caption file of the user's: the
    caption files on disk, the summary on the node; then a folder that does not exist is a one-line node error."""
    from core.dataset import read_jsonl
    from core.images import open_image
    from tests.tiny_models import sample_images

    folder = tmp_path / "dataset"
    folder.mkdir()
    for i, image in enumerate(sample_images()):
        image.resize((64, 64)).save(folder / f"img{i}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    (folder / "img1.txt").write_text("my own caption\n", encoding="utf-8")
    graph = {"1": _workflow(comfyui.names)["20"],
             "2": {"class_type": "ClipInterrogatorCaptionFolder", "inputs": {
                 "folder": str(folder), "interrogator": ["1", 0], "mode": "fast", "max_flavors": 6,
                 "trigger_word": "ohwx", "jsonl": True}}}

    result = comfyui.run(graph)
    assert result["status"]["status_str"] == "success", json.dumps(result["status"], indent=1)
    summary, = result["outputs"]["2"]["text"]
    lines = summary.splitlines()
    assert lines[0] == "2 captioned, 1 skipped (caption file exists), 1 failed"
    assert len(lines) == 2 and str(folder / "broken.jpg") in lines[1]
    assert sorted(os.listdir(folder)) == ["broken.jpg", "captions.jsonl", "img0.png", "img0.txt", "img1.png",
                                          "img1.txt", "img2.png", "img2.txt"]  # no temp file left
    assert (folder / "img1.txt").read_text(encoding="utf-8") == "my own caption\n"
    for name in ("img0", "img2"):
        prompt = engine.interrogate(open_image(str(folder / f"{name}.png")), "fast", max_terms=6)[0]
        assert (folder / f"{name}.txt").read_text(encoding="utf-8") == f"ohwx, {prompt}\n"
    assert {image: r["text"] for image, r in read_jsonl(str(folder / "captions.jsonl")).items()} == {
        f"{name}.png": (folder / f"{name}.txt").read_text(encoding="utf-8")[:-1] for name in ("img0", "img2")}

    again = comfyui.run(graph)  # the node always runs: everything is skipped now
    assert again["outputs"]["2"]["text"][0] == "0 captioned, 3 skipped (caption file exists), 1 failed\n" + lines[1]

    nowhere = tmp_path / "nowhere"
    graph["2"]["inputs"]["folder"] = str(nowhere)
    failed = comfyui.run(graph)
    assert failed["status"]["status_str"] == "error"
    errors = [data for event, data in failed["status"]["messages"] if event == "execution_error"]
    assert [e["node_type"] for e in errors] == ["ClipInterrogatorCaptionFolder"]
    assert errors[0]["exception_message"].strip() == (
        f"CLIP Interrogator: the folder {nowhere} does not exist; give the full path of the dataset folder.")
