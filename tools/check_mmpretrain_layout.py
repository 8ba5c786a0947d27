"""One-off check that our mmpretrain layout is the real one: mmpretrain 1.2.0 loads a checkpoint written
in that layout (``backbone.*``, fc inside the backbone) and gives the same logits as ``get_model``.

mmpretrain is never a dependency. Run it in a throwaway venv beside torch and torchvision:
    pip install --no-deps mmpretrain==1.2.0 mmcv-lite==2.2.0
    pip install mmengine==0.10.7 einops mat4py modelindex matplotlib rich importlib-metadata safetensors tqdm
    PYTHONPATH=src python tools/check_mmpretrain_layout.py
"""

import tempfile
from pathlib import Path

import mmpretrain
import torch

from inceptionv3 import InceptionV3, get_model


def main() -> None:
    torch.manual_seed(0)
    model = InceptionV3().eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2)
            module.running_mean.normal_(0, 0.1)
    path = Path(tempfile.mkdtemp()) / "mmpretrain_layout.pth"
    state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "meta": {"dataset_meta": {"classes": [f"c{i}" for i in range(1000)]}}}, path)
    reference = mmpretrain.get_model("inception-v3_3rdparty_8xb32_in1k", pretrained=str(path)).eval()
    assert set(reference.state_dict()) == set(state), "key sets differ"
    x = torch.randn(2, 3, 299, 299)
    with torch.no_grad():
        expected = reference(x, mode="tensor")
        expected = expected[-1] if isinstance(expected, (tuple, list)) else expected
        ours = get_model(path)(x)
    print(f"max |dlogit| mmpretrain vs inceptionv3: {(expected - ours).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
