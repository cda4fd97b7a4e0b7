"""--plan on gin/tables/table3_paper.gin with stand-ins: the ScanNet excerpt (its 3 posed colour images as the
pretraining frames, depth by z-buffering), a tiny random SAM (the tests' build_tiny_sam, under the tests'
torchvision stand-in) and a tiny random DINOv2 saved like a real checkpoint. Run from the repository root:
    python tests/paper_plan.py RESULTS_DIR [extra --gin_binding=... ...]
"""
import pathlib
import sys
import time

started = time.time()
sys.path.insert(0, ".")
import gin  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from bench.cli import main  # noqa: E402
from tests.methods.sam_shim import torchvision_shim  # noqa: E402
from tests.methods.test_mask_sources import build_tiny_sam  # noqa: E402

REAL = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "scannet"
results = pathlib.Path(sys.argv[1])
weights = results.parent / (results.name + "-weights")
weights.mkdir(parents=True, exist_ok=True)
dino = weights / "dinov2-tiny"
if not dino.exists():
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, image_size=56, patch_size=14)
    transformers.Dinov2Model(config).save_pretrained(dino)
gin.external_configurable(build_tiny_sam, "build_tiny_sam")
with torchvision_shim():
    sam = weights / "sam_tiny.pth"
    if not sam.exists():
        torch.save(build_tiny_sam().state_dict(), sam)
    args = ["--gin=gin/tables/table3_paper.gin",
            f"--gin_binding=ScanNetExport.root = '{REAL / 'mmdet3d_9e39d46' / 'scannet_train_instance_data'}'",
            f"--gin_binding=ScanNetExport.meta_dir = '{REAL / 'mmdet3d_9e39d46' / 'meta_data'}'",
            "--gin_binding=pretrain/ScanNetExport.frames = @PosedImageFrames()",
            "--gin_binding=SensFrames.root = 'unused: PosedImageFrames'",
            "--gin_binding=SensFrames.alignment_root = 'unused'",
            f"--gin_binding=PosedImageFrames.infos = '{REAL / 'mmdet3d_89defca' / 'scannet_infos.pkl'}'",
            f"--gin_binding=SamMaskSource.checkpoint = '{sam}'",
            "--gin_binding=SamMaskSource.model_type = 'tiny'", "--gin_binding=SamMaskSource.min_mask_region_area = 0",
            "--gin_binding=SamMaskSource.pred_iou_thresh = 0.0",
            "--gin_binding=SamMaskSource.stability_score_thresh = 0.0",
            "--gin_binding=SamMaskSource.model_builder = @build_tiny_sam",
            f"--gin_binding=Dinov2Teacher.model_dir = '{dino}'",
            *sys.argv[2:], f"--results_dir={results}", "--plan"]
    code = main(args)
print(f"paper plan: exit {code}, {time.time() - started:.1f} s in this process", file=sys.stderr)
sys.exit(code)
