"""Ways to run a network's convolutions on cuDNN, for the first-step study (bench/first_step.py).

cuDNN 9.10 and later compile an execution plan at run time for each depthwise convolution configuration it first
meets (about 1.5 s a plan: NVIDIA/cudnn-frontend#1066), for the forward pass, the data gradient and the weight
gradient each; tf_efficientnet_b5 at 64x64 has 39 depthwise convolutions in 14 configurations. The layouts:

- channels_last: the whole network and its input in channels_last (the projects' default);
- nchw: the whole network in the default (contiguous) layout;
- depthwise-nchw: channels_last, but each depthwise convolution takes and returns its own contiguous copy;
- depthwise-native: channels_last, each depthwise convolution (forward and both gradients) on PyTorch's own
  kernels, with cuDNN off for it alone.

A layout changes the modules' classes in place, never their parameters or state_dict keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LAYOUTS = ("channels_last", "nchw", "depthwise-nchw", "depthwise-native")


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def apply_layout(model: nn.Module, layout: str) -> nn.Module:
    """The model with `layout`; the caller passes its input in model_input_format(layout)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: one of {', '.join(LAYOUTS)}")
    model = model.to(memory_format=torch.contiguous_format if layout == "nchw" else torch.channels_last)
    if layout.startswith("depthwise-"):
        forward = _nchw_forward if layout == "depthwise-nchw" else _native_forward
        for module in model.modules():
            if is_depthwise(module):
                cls = type(module)
                module.__class__ = type(f"{cls.__name__}_{layout.replace('-', '_')}", (cls,), {"forward": forward})
    return model


def model_input_format(layout: str) -> torch.memory_format:
    return torch.contiguous_format if layout == "nchw" else torch.channels_last


def _original_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return type(module).__mro__[1].forward(module, x)


def _nchw_forward(self, x: torch.Tensor) -> torch.Tensor:
    return _original_forward(self, x.contiguous()).contiguous(memory_format=torch.channels_last)


def _native_forward(self, x: torch.Tensor) -> torch.Tensor:
    padding = self.padding
    if getattr(self, "_is_same_padded", None) is None:  # timm's Conv2dSame pads in its forward (TF "SAME")
        from timm.layers.conv2d_same import Conv2dSame

        self._is_same_padded = isinstance(self, Conv2dSame)
    if self._is_same_padded:
        from timm.layers.padding import pad_same

        x, padding = pad_same(x, self.weight.shape[-2:], self.stride, self.dilation), (0, 0)
    return _ConvWithoutCudnn.apply(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


class _ConvWithoutCudnn(torch.autograd.Function):
    """conv2d whose forward and backward both run with cuDNN off (the backward would otherwise choose cuDNN again,
    since the flag is read when it runs), in the autocast dtype the surrounding autocast asks for."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        ctx.save_for_backward(x, weight)
        ctx.settings, ctx.has_bias = (stride, padding, dilation, groups), bias is not None
        with torch.autocast(x.device.type, enabled=False), torch.backends.cudnn.flags(enabled=False):
            return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.settings
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        with torch.backends.cudnn.flags(enabled=False):
            grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                grad.to(x.dtype), x, weight, [weight.shape[0]] if ctx.has_bias else None,
                list(stride), list(padding), list(dilation), False, [0, 0], groups, mask,
            )  # fmt: skip
        return grad_x, grad_weight, grad_bias if ctx.has_bias else None, None, None, None, None
