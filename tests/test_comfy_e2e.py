"""End to end in a real ComfyUI: start its server with this pack installed, run a workflow, read the prompts back.

Runs when ``COMFYUI_DIR`` points to a ComfyUI checkout whose requirements are importable by this Python (or by
``COMFYUI_PYTHON``). The server runs on the CPU, listens on 127.0.0.1 only, in a throw-away base directory with
this pack linked into custom_nodes and the tiny test models in models/clip_interrogator; it is always stopped.
"""

import contextlib
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


@contextlib.contextmanager
def comfyui_server(base_dir, tmp_path, *flags):
    """A headless ComfyUI on the CPU over ``base_dir``: yields (url, process, log path); always stopped."""
    port = _free_port()
    log_path = str(tmp_path / "comfyui.log")
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                                 "--base-directory", str(base_dir), "--disable-auto-launch", *flags],
                                cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        yield f"http://127.0.0.1:{port}", proc, log_path
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.copy(log_path, os.environ["COMFYUI_E2E_LOG"]) if os.environ.get("COMFYUI_E2E_LOG") else None


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


def test_workflow_with_every_node_in_comfyui(tmp_path):
    from tests.tiny_models import sample_images, write_tiny_blip, write_tiny_clip

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

    with comfyui_server(base_dir, tmp_path) as (base, proc, log_path):
        info = _wait_for_server(base, proc, log_path)
        node_info = info["ClipInterrogatorInterrogate"]
        assert node_info["output"] == ["STRING"] * 3 and node_info["output_is_list"] == [True] * 3
        assert node_info["output_name"] == ["prompt", "caption", "warnings"]
        assert "precise" in node_info["input"]["required"]["mode"][0]
        load_info = _request(f"{base}/object_info/ClipInterrogatorLoad")["ClipInterrogatorLoad"]
        assert "tiny-clip.safetensors" in load_info["input"]["required"]["clip_model"][0]

        # the example workflows match this ComfyUI's node definitions (what its frontend loads them against)
        object_info = _request(f"{base}/object_info", timeout=60)
        examples = os.path.join(ROOT, "example_workflows")
        for name in sorted(os.listdir(examples)):
            if name.endswith(".json"):
                _check_example_workflow(os.path.join(examples, name), object_info)

        queued = _request(f"{base}/prompt", {"prompt": _workflow(names), "client_id": "e2e-test"})
        result = _wait_for_history(base, queued["prompt_id"], proc, log_path)
        assert result["status"]["status_str"] == "success", json.dumps(result["status"], indent=1)
        outputs = result["outputs"]
        prompts = outputs["21"]["text"]
        assert len(prompts) == 3 and all(prompts) and len(set(prompts)) == 3
        for node_id in ("22", "23", "24"):
            assert len(outputs[node_id]["text"]) == 3 and all(outputs[node_id]["text"])

        # the same prompts as the engine writes for these images, run here directly
        from PIL import Image

        from core import Interrogator, Vocabulary, load_captioner, load_clip

        clip = load_clip(weights=str(models / "tiny-clip.safetensors"))
        engine = Interrogator(clip, load_captioner("blip-large", models_dir=str(models)), Vocabulary.builtin())
        images = [Image.open(base_dir / "input" / name).convert("RGB") for name in names]
        assert engine.interrogate(images, "fast") == prompts
        assert os.listdir(models / "cache")  # embedding caches live under models/clip_interrogator/cache

        released = lambda: _tail(log_path, 1000).count("CLIP Interrogator: released")
        assert released() == 0  # nothing was evicted while the workflow ran
        _request(f"{base}/free", {"unload_models": True, "free_memory": True})
        deadline = time.time() + 30
        while released() < 2 and time.time() < deadline:
            time.sleep(0.5)
        assert released() == 2, _tail(log_path)  # CLIP and the caption model, with CLIP's label matrices

        # after /free the models come back on next use
        loads = _tail(log_path, 1000).count("Requested to load _Holder")
        graph = _workflow(names)
        graph["21"]["inputs"]["max_flavors"] = 3  # a changed input, so ComfyUI runs the node again
        queued = _request(f"{base}/prompt", {"prompt": graph, "client_id": "e2e-test"})
        again = _wait_for_history(base, queued["prompt_id"], proc, log_path)
        assert again["status"]["status_str"] == "success"
        shorter = again["outputs"]["21"]["text"]
        assert len(shorter) == 3 and all(p.startswith(s) and p != s for p, s in zip(prompts, shorter))
        assert _tail(log_path, 1000).count("Requested to load _Holder") > loads

        _check_caption_folder(lambda graph: _run(base, proc, log_path, graph), engine, tmp_path / "dataset")


def _run(base, proc, log_path, graph):
    """Queue ``graph`` and wait for its history entry."""
    queued = _request(f"{base}/prompt", {"prompt": graph, "client_id": "e2e-test"})
    return _wait_for_history(base, queued["prompt_id"], proc, log_path)


def _check_caption_folder(run, engine, folder):
    """Load Interrogator -> Caption Folder on a folder with a corrupt image and a caption file of the user's: the
    caption files on disk, the summary on the node; then a folder that does not exist is a one-line node error."""
    from core.dataset import read_jsonl
    from core.images import open_image
    from tests.tiny_models import sample_images

    folder.mkdir()
    for i, image in enumerate(sample_images()):
        image.resize((64, 64)).save(folder / f"img{i}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    (folder / "img1.txt").write_text("my own caption\n", encoding="utf-8")
    graph = {"1": _workflow([])["20"],
             "2": {"class_type": "ClipInterrogatorCaptionFolder", "inputs": {
                 "folder": str(folder), "interrogator": ["1", 0], "mode": "fast", "max_flavors": 6,
                 "trigger_word": "ohwx", "jsonl": True}}}

    result = run(graph)
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

    again = run(graph)  # the node always runs: everything is skipped now
    assert again["outputs"]["2"]["text"][0] == "0 captioned, 3 skipped (caption file exists), 1 failed\n" + lines[1]

    nowhere = folder.parent / "nowhere"
    graph["2"]["inputs"]["folder"] = str(nowhere)
    failed = run(graph)
    assert failed["status"]["status_str"] == "error"
    errors = [data for event, data in failed["status"]["messages"] if event == "execution_error"]
    assert [e["node_type"] for e in errors] == ["ClipInterrogatorCaptionFolder"]
    assert errors[0]["exception_message"].strip() == (
        f"CLIP Interrogator: the folder {nowhere} does not exist; give the full path of the dataset folder.")


def test_comfyui_objects_convert_to_one_clip(tmp_path):
    """ComfyUI's own CLIP and CLIP Vision classes (sized tiny through their configs) through the pack's extraction:
    features equal ComfyUI's own forward passes, fp16 weights are shared, LoRA patches and never-loaded weights are
    left out, and a SigLIP vision model is refused."""
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    script = os.path.join(ROOT, "tests", "comfy_objects.py")
    done = subprocess.run([python, script, COMFYUI_DIR, ROOT, str(tmp_path)], capture_output=True, text=True,
                          timeout=600, cwd=str(tmp_path))
    reports = [line[len("REPORT "):] for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert done.returncode == 0 and reports, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(reports[-1])
    for activation in ("quick_gelu", "gelu"):
        run = report[activation]
        assert run["towers"] == ["clip_l"] and run["others"] == [] and run["hidden_act"] == [activation]
        assert run["text_max_diff"] < 1e-5 * max(run["text_scale"], 1), run
        assert run["image_max_diff"] < 1e-5 * max(run["image_scale"], 1), run
        # fp16 model over ComfyUI's fp16 tensors: all but q/k/v, the projections and the text norms are shared
        assert run["fp16_shared_tensors"] == 33 and run["fp16_tensors"] == 62, run
        assert run["lora_applied"] and run["lora_ignored"] and run["same_identity"], run
    assert report["projection_left_out"]
    assert report["no_projection_error"].startswith("clip_l of the connected CLIP has no text_projection")
    assert "the connected CLIP Vision is a SigLIP image encoder" in report["siglip_error"]


VIT_L_PAIR = "text_encoders/clip_l.safetensors [clip_l] + clip_vision/clip_vision_vit_l.safetensors"


def _write_vit_l(models):
    """Random full-size ViT-L-14 weights (fp16), as users have them: ComfyUI's clip_l text encoder (with and, as an
    SD 1.x checkpoint gives it, without text_projection) and CLIP Vision files, and the same weights as an open_clip
    file for Load Interrogator; plus a small vocabulary (12 terms of every shipped list): a full-size text tower
    embeds ~16 labels a second on a busy 2-core CPU."""
    import open_clip
    import torch

    from core import Vocabulary
    from tests.tiny_models import comfy_layout, save_tensors

    torch.manual_seed(0)
    model = open_clip.CLIP(**open_clip.get_model_config("ViT-L-14"), quick_gelu=True).half()
    save_tensors(model.state_dict(), str(models / "clip_interrogator" / "ViT-L-14-openai.safetensors"))
    text, vision = comfy_layout(model)
    save_tensors(text, str(models / "text_encoders" / "clip_l.safetensors"))
    save_tensors({k: v for k, v in text.items() if k != "text_projection.weight"},
                 str(models / "text_encoders" / "clip_l_sd15.safetensors"))
    save_tensors(vision, str(models / "clip_vision" / "clip_vision_vit_l.safetensors"))
    lists = [{"name": tl.name, "role": tl.role, "style": tl.style, "terms": list(tl.terms[:12])}
             for tl in Vocabulary.builtin().lists]
    os.makedirs(models / "clip_interrogator" / "vocabularies" / "e2e")
    with open(models / "clip_interrogator" / "vocabularies" / "e2e" / "manifest.json", "w") as file:
        json.dump({"lists": lists}, file)


def _pair_graph(image, interrogator: dict, clip_file="clip_l.safetensors", analyze=False):
    """LoadImage -> Interrogate Image (and Analyze Image), with the interrogator node given (node "40")."""
    graph = {"10": {"class_type": "LoadImage", "inputs": {"image": image}}}
    graph["30"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": clip_file, "type": "stable_diffusion"}}
    graph["31"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "clip_vision_vit_l.safetensors"}}
    options = {"caption_model": "none", "precision": "auto", "device": "auto", "vocabulary": "e2e", "artists": True,
               "ban": ""}
    graph["40"] = {"class_type": interrogator.pop("class_type"), "inputs": dict(options, **interrogator)}
    graph["41"] = {"class_type": "ClipInterrogatorInterrogate", "inputs": {
        "image": ["10", 0], "interrogator": ["40", 0], "mode": "fast", "max_flavors": 0, "caption": "a photo of"}}
    if analyze:
        graph["42"] = {"class_type": "ClipInterrogatorAnalyze", "inputs": {
            "image": ["10", 0], "interrogator": ["40", 0], "top": 3}}
    return graph


def _cache_files(folder):
    return {os.path.join(root, f): os.stat(os.path.join(root, f)).st_mtime_ns
            for root, _, files in os.walk(folder) for f in files}


def test_interrogator_from_comfyui_loaders_equals_the_open_clip_file(tmp_path):
    """Full-size ViT-L-14 weights loaded by ComfyUI's own CLIPLoader and CLIPVisionLoader, wired into Interrogator
    from ComfyUI Models -> Interrogate Image, give the prompts of the same weights as an open_clip file through Load
    Interrogator, and of the file pair Load Interrogator lists; an SD 1.x-style clip_l is a one-line node error."""
    base_dir = tmp_path / "comfy"
    models = base_dir / "models"
    for folder in ("custom_nodes", "input", "models/clip_interrogator", "models/text_encoders", "models/clip_vision"):
        os.makedirs(base_dir / folder)
    try:
        _write_vit_l(models)
        _run_pair_workflows(base_dir, tmp_path)
    finally:
        shutil.rmtree(models)  # ~2 GB of weights: not kept for pytest's last three runs


def _run_pair_workflows(base_dir, tmp_path):
    from tests.tiny_models import sample_images

    models = base_dir / "models"
    os.symlink(ROOT, base_dir / "custom_nodes" / "comfyui-clip-interrogator-nodes")
    image = "shapes.png"
    sample_images()[2].save(base_dir / "input" / image)
    pair_node = {"class_type": "ClipInterrogatorFromComfyModels", "clip": ["30", 0], "clip_vision": ["31", 0],
                 "text_encoder": "auto"}
    unload = {"1": {"class_type": "ClipInterrogatorUnload", "inputs": {"free_ram": True}}}

    with comfyui_server(base_dir, tmp_path) as (base, proc, log_path):
        def run(graph):
            queued = _request(f"{base}/prompt", {"prompt": graph, "client_id": "e2e-pair"})
            return _wait_for_history(base, queued["prompt_id"], proc, log_path)

        _wait_for_server(base, proc, log_path)
        choices = _request(f"{base}/object_info/ClipInterrogatorLoad")["ClipInterrogatorLoad"]["input"]["required"][
            "clip_model"][0]
        assert [c for c in choices if "clip_vision/" in c] == [VIT_L_PAIR]  # not the SD 1.x-style clip_l
        cache = models / "clip_interrogator" / "cache"

        from_loaders = run(_pair_graph(image, dict(pair_node), analyze=True))
        assert from_loaders["status"]["status_str"] == "success", json.dumps(from_loaders["status"], indent=1)
        prompts = from_loaders["outputs"]["41"]["text"]
        assert len(prompts) == 1 and prompts[0].startswith("a photo of, ") and prompts[0].count(", ") > 8
        analysis = from_loaders["outputs"]["42"]["text"]
        assert analysis[0].startswith("CLIP: ViT-L-14: clip_l of clip_l.safetensors + clip_vision_vit_l.safetensors "
                                      "(float32 on cpu)\n"), analysis[0]
        assert run(unload)["status"]["status_str"] == "success"
        embedded = _cache_files(cache)

        open_clip_file = run(_pair_graph(image, {"class_type": "ClipInterrogatorLoad",
                                                 "clip_model": "ViT-L-14/openai"}))
        assert open_clip_file["outputs"]["41"]["text"] == prompts, json.dumps(open_clip_file["status"], indent=1)
        assert run(unload)["status"]["status_str"] == "success"

        files = _cache_files(cache)
        file_pair = run(_pair_graph(image, {"class_type": "ClipInterrogatorLoad", "clip_model": VIT_L_PAIR}))
        assert file_pair["outputs"]["41"]["text"] == prompts, json.dumps(file_pair["status"], indent=1)
        assert _cache_files(cache) == files != embedded  # the same text encoder: its label cache is reused

        bad = run(_pair_graph(image, dict(pair_node), clip_file="clip_l_sd15.safetensors"))
        errors = [m[1] for m in bad["status"]["messages"] if m[0] == "execution_error"]
        assert bad["status"]["status_str"] == "error" and errors, json.dumps(bad["status"], indent=1)
        assert errors[0]["node_type"] == "ClipInterrogatorFromComfyModels"
        message = errors[0]["exception_message"].strip()
        assert message.startswith("CLIP Interrogator: clip_l of clip_l_sd15.safetensors has no text_projection")
        assert "clip_l.safetensors" in message.splitlines()[0]


# -- the SDXL and Flux example workflows, run up to their text encoders ---------------------------------------------
E2E_WEIGHTS = os.environ.get("CLIP_INTERROGATOR_E2E_WEIGHTS") or os.path.join(
    os.path.expanduser("~"), ".cache", "clip_interrogator_nodes", "e2e_text_encoders")
FULL_T5 = os.environ.get("COMFYUI_E2E_T5XXL") == "1"  # also run Flux's T5-XXL (a 4.8 GB fp8 file, ~5 GB of RAM)


def _api_graph(workflow, object_info, clip_loader):
    """The API prompt the frontend queues for a UI-format workflow, cut after its text encoders: every encoder's
    ``clip`` comes from ``clip_loader`` (random weights instead of a checkpoint) and feeds a PreviewAny, so
    ComfyUI executes the encoders; the sampler, UNet and VAE are left out."""
    links = {link[0]: link for link in workflow["links"]}
    graph = {}
    for node in workflow["nodes"]:
        names = [name for name, _, _ in _widget_specs(object_info[node["type"]])]
        inputs = dict(zip(names, node["widgets_values"]))
        for slot in node["inputs"]:
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        graph[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    encoders = [key for key, node in graph.items() if node["class_type"].startswith("CLIPTextEncode")]
    graph["900"] = clip_loader
    for key in encoders:
        graph[key]["inputs"]["clip"] = ["900", 0]
        graph[f"9{key}"] = {"class_type": "PreviewAny", "inputs": {"source": [key, 0]}}
    keep, todo = set(), [key for key in graph if key.startswith("9") and key != "900"]
    while todo:
        key = todo.pop()
        if key not in keep:
            keep.add(key)
            todo += [value[0] for value in graph[key]["inputs"].values() if isinstance(value, list)]
    return {key: node for key, node in graph.items() if key in keep}, encoders


@pytest.mark.parametrize("example", ["sdxl", "flux"])
def test_example_workflow_runs_up_to_the_text_encoders(tmp_path, example):
    import torch

    from core.token_count import T5Counter, clip_counter
    from tests.random_text_encoders import write_random_text_encoder
    from tests.tiny_models import sample_images, write_tiny_clip, write_tiny_florence2

    base_dir = tmp_path / "comfy"
    models = base_dir / "models" / "clip_interrogator"
    encoders_dir = base_dir / "models" / "text_encoders"
    for folder in (base_dir / "custom_nodes", base_dir / "input", encoders_dir):
        os.makedirs(folder)
    write_tiny_clip(str(models))
    write_tiny_florence2(str(models / "Florence-2-base"))
    os.symlink(ROOT, base_dir / "custom_nodes" / "comfyui-clip-interrogator-nodes")
    sample_images()[2].resize((64, 64)).save(base_dir / "input" / "example.png")
    kinds = {"sdxl": ["clip_l", "clip_g"], "flux": ["clip_l", "t5xxl"] if FULL_T5 else ["clip_l"]}[example]
    files = {}
    for kind in kinds:
        dtype = torch.float8_e4m3fn if kind == "t5xxl" else torch.float16
        files[kind] = os.path.basename(write_random_text_encoder(E2E_WEIGHTS, kind, dtype))
        os.symlink(os.path.join(E2E_WEIGHTS, files[kind]), encoders_dir / files[kind])
    if example == "sdxl":
        loader = {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": files["clip_l"],
                                                             "clip_name2": files["clip_g"], "type": "sdxl"}}
    elif FULL_T5:
        loader = {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": files["clip_l"],
                                                             "clip_name2": files["t5xxl"], "type": "flux"}}
    else:  # CLIP-L alone as an SD3-type CLIP: both texts are tokenized (T5 with ComfyUI's tokenizer), CLIP-L runs
        loader = {"class_type": "CLIPLoader", "inputs": {"clip_name": files["clip_l"], "type": "sd3"}}

    # ComfyUI keeps text encoders in fp16 on a CPU, where half-precision matrix products can be 100x slower
    with comfyui_server(base_dir, tmp_path, "--fp32-text-enc") as (base, proc, log_path):
        _wait_for_server(base, proc, log_path)
        object_info = _request(f"{base}/object_info", timeout=60)
        with open(os.path.join(ROOT, "example_workflows", f"{example}_image_to_prompt.json")) as file:
            graph, encoders = _api_graph(json.load(file), object_info, loader)
        ours = [key for key, node in graph.items() if node["class_type"].startswith("ClipInterrogatorPrompts")]
        load = next(node for node in graph.values() if node["class_type"] == "ClipInterrogatorLoad")
        load["inputs"].update(clip_model="tiny-clip.safetensors", caption_model="florence-2-base",
                              caption_max_tokens=12)  # the tiny stand-ins for the presets the example names
        queued = _request(f"{base}/prompt", {"prompt": graph, "client_id": "e2e-encoders"})
        result = _wait_for_history(base, queued["prompt_id"], proc, log_path, timeout=1800)
    assert result["status"]["status_str"] == "success", json.dumps(result["status"], indent=1)[-3000:]
    outputs = result["outputs"]
    assert len(encoders) == (2 if example == "sdxl" else 1)
    for key in encoders:  # each text encoder ran and its conditioning reached the sink
        assert outputs[f"9{key}"]["text"][0].strip()
    texts = dict(line.split(": ", 1) for line in outputs[ours[0]]["text"][0].split("\n"))
    assert set(texts) == ({"text_g", "text_l", "negative"} if example == "sdxl" else {"clip_l", "t5xxl"})
    t5 = T5Counter(os.path.join(COMFYUI_DIR, "comfy", "text_encoders", "t5_tokenizer"))
    for name, text in texts.items():
        assert text and (t5 if name == "t5xxl" else clip_counter()).count(text) <= (256 if name == "t5xxl" else 77)
    log = _tail(log_path, 5000)
    assert ("SDXLClipModel" if example == "sdxl" else "FluxClipModel_" if FULL_T5 else "SD3ClipModel") in log
    assert "clip missing" not in log and "clip unexpected" not in log  # every encoder weight came from our files
    assert "no T5 tokenizer" not in log  # the pack counted t5xxl with ComfyUI's own T5 tokenizer

