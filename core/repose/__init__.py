"""RePoseDM (Khandelwal, ``shared/papers/repose_dm.txt``): recurrent pose alignment (PoseAlign), the
appearance-conditioned latent denoiser, pose gradient guidance (PoseGuidance) and the sampler.

No public code exists; this is a reference implementation from the paper (equation numbers in comments).
"""

from .denoiser import (PAPER_UNET_CONFIG, TINY_UNET_CONFIG, RePoseDenoiser, RePoseDenoiserOutput, RePoseTrainConfig,
                       draw_training_noise, hybrid_loss, make_ema, make_optimizer, repose_noise_scheduler, training_loss,
                       training_step)
from .guidance import (PoseGuidance, PoseTarget, guided_eps, percent_timestep_range, pose_heatmaps_coco17,
                       tweedie_x0)
from .pose_align import (PAPER_POSE_ALIGN_CONFIG, TINY_POSE_ALIGN_CONFIG, MapFormer, MapFormerLayer, PoseAlign,
                         PoseAlignOutput, PoseMappingAggregator, accumulate_flows, local_attention,
                         local_attention_reference, local_correlation, local_correlation_reference)
from .pose_estimator import (HIGHER_HRNET_W32_CONFIG, HIGHER_HRNET_W48_CONFIG, HigherHRNet, HigherHRNetEstimator,
                             ModulePoseEstimator, PoseEstimate, PoseEstimator, TinyPoseEstimator, as_pose_estimator,
                             load_higher_hrnet)
from .sampler import (TINY_VAE_CONFIG, RePoseSampler, RePoseSamplerOutput, SamplingInterrupted, StepInfo, VaeCodec,
                      denoise_loop, make_generator)

__all__ = [
    "PAPER_UNET_CONFIG", "TINY_UNET_CONFIG", "RePoseDenoiser", "RePoseDenoiserOutput", "RePoseTrainConfig",
    "draw_training_noise", "hybrid_loss", "make_ema", "make_optimizer", "repose_noise_scheduler", "training_loss",
    "training_step",
    "PoseGuidance", "PoseTarget", "guided_eps", "percent_timestep_range", "pose_heatmaps_coco17", "tweedie_x0",
    "PAPER_POSE_ALIGN_CONFIG", "TINY_POSE_ALIGN_CONFIG", "MapFormer", "MapFormerLayer", "PoseAlign",
    "PoseAlignOutput", "PoseMappingAggregator", "accumulate_flows", "local_attention", "local_attention_reference",
    "local_correlation", "local_correlation_reference",
    "HIGHER_HRNET_W32_CONFIG", "HIGHER_HRNET_W48_CONFIG", "HigherHRNet", "HigherHRNetEstimator",
    "ModulePoseEstimator", "PoseEstimate", "PoseEstimator", "TinyPoseEstimator", "as_pose_estimator",
    "load_higher_hrnet",
    "TINY_VAE_CONFIG", "RePoseSampler", "RePoseSamplerOutput", "SamplingInterrupted", "StepInfo", "VaeCodec",
    "denoise_loop", "make_generator",
]
