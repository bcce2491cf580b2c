"""GPU workers (run where CUDA is available): votes match a local GPU run; OOM fails fast."""

import time

import pytest
import torch

from compo.config import ModelConfig
from compo.demo.tiny import build_llama, save_model
from compo.errors import DistributedError
from compo.train import ComPOTrainer, start_run
from workers.coordinator import RayVoteSource

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU: one-GPU worker actors and GPU memory limits"),
    pytest.mark.usefixtures("ray_local"),
]
HEADROOM_BYTES = 1024**3  # GPU memory left free: a CUDA context fits, the model not
BIG_HIDDEN = 4096  # a 2-layer model of this width needs about 1.7 GB in float32


def gpu_config(make_config, run_id: str, **ray):
    share = {"gpus_per_worker": 0.5, "gpus_per_body": 0.5}  # the body and the worker: 1 GPU
    config = make_config(run_id, {"num_workers": 1, "use_gpu": True, **share, **ray})
    return config.model_copy(update={"model": config.model.model_copy(update={"device": "cuda"})})


def test_a_gpu_worker_reproduces_the_local_gpu_run(make_config, train_ray):
    config = gpu_config(make_config, "gpu")
    local = config.model_copy(update={"ray": None, "run_id": "gpu-local"})
    expected = ComPOTrainer(local, start_run(local)).run(progress=False)
    weights, trainer = train_ray(config)
    assert torch.equal(weights.cpu(), expected.cpu())
    assert trainer.source.use_gpu


def test_worker_out_of_gpu_memory_fails_fast_naming_it(make_config, tokenizer, tmp_path):
    big = save_model(build_llama(len(tokenizer), hidden=BIG_HIDDEN, layers=2), tokenizer,
                     tmp_path / "big")
    config = gpu_config(make_config, "oom")
    config = config.model_copy(update={"model": ModelConfig(path=str(big), device="cuda")})
    free, _ = torch.cuda.mem_get_info()
    hog = torch.empty(free - HEADROOM_BYTES, dtype=torch.uint8, device="cuda")
    started = time.monotonic()
    source = RayVoteSource(config, progress=False)
    try:
        with pytest.raises(DistributedError, match=r"(?i)the body could not load "
                                                   r"the model .*out of memory"):
            source.start(torch.zeros(len(tokenizer), BIG_HIDDEN))
    finally:
        source.close()
        del hog
    assert time.monotonic() - started < config.ray.load_timeout_s
