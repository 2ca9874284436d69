"""Learned flow estimators: single spatial transformation and structure-aware part flow."""
from .part_flow_net import (PART_FLOW_PAPER_CONFIG, PART_FLOW_TINY_CONFIG, PartFlowEstimator, PartFlowNet,
                            PartFlowNetOutput)
from .single_transform import (PAPER_FLOW_NET_CONFIG, PAPER_REFINER_CONFIG, TINY_FLOW_NET_CONFIG,
                               TINY_REFINER_CONFIG, SingleTransformEstimator, SingleTransformFlowNet,
                               SingleTransformOutput, SingleTransformRefiner, guided_correlation, pose_to_heatmaps)
from .part_flow_losses import PartFlowDiscriminator, PartFlowLossWeights, part_flow_vgg19
