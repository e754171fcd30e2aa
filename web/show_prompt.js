// Shows the text a CLIP Interrogator node produced (its `ui.text` result) on the node, read-only.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const NODES = new Set([
  "ClipInterrogatorInterrogate",
  "ClipInterrogatorStylePrompt",
  "ClipInterrogatorNegativePrompt",
  "ClipInterrogatorAnalyze",
  "ClipInterrogatorUnload",
  "ClipInterrogatorCaptionFolder",
]);
const WIDGET = "shown_text";

function showText(node, texts) {
  const value = (Array.isArray(texts) ? texts : [texts]).join("\n\n");
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!widget) {
    widget = ComfyWidgets["STRING"](node, WIDGET, ["STRING", { multiline: true }], app).widget;
    widget.serialize = false; // display only: never saved into the workflow or sent with the prompt
    widget.options = { ...(widget.options || {}), serialize: false };
    if (widget.inputEl) {
      widget.inputEl.readOnly = true;
      widget.inputEl.style.opacity = 0.75;
    }
  }
  widget.value = value;
  node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "ClipInterrogator.ShowText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.text) showText(this, message.text);
    };
  },
});
