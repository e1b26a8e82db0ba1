"""What the tool knows about its registry models without importing Keras: names, what each
input side must be a multiple of, and one line each. ``ihclib.model`` builds them and checks
at import that it builds exactly these; ``ihclib --help`` and the profiles read them from here."""

from __future__ import annotations

MODEL_NAMES = ("paper_unet", "dncnn_residual", "switching_unet", "crosschannel_unet", "crosschannel_s2d_unet",
               "crosschannel_s4d_cnn", "crosschannel_s4d_unet")

# height and width of an input must be multiples of this (2 ** number of stride-2 stages)
INPUT_MULTIPLE = {"paper_unet": 32, "dncnn_residual": 1, "switching_unet": 4, "crosschannel_unet": 4,
                  "crosschannel_s2d_unet": 8, "crosschannel_s4d_cnn": 4,
                  "crosschannel_s4d_unet": 4}

# the models built on the cross-channel filter, with its hard gate and its fused inference path
CROSSCHANNEL_MODELS = ("crosschannel_unet", "crosschannel_s2d_unet", "crosschannel_s4d_cnn", "crosschannel_s4d_unet")

# for inputs of unknown models (no sidecar): the strictest registry constraint
STRICTEST_MULTIPLE = max(INPUT_MULTIPLE.values())

DESCRIPTIONS = {
    "paper_unet": "the paper's encoder-decoder (Figure 3)",
    "dncnn_residual": "full-resolution residual CNN predicting the noise (DnCNN-style)",
    "switching_unet": "small U-Net with a switching head: m*f + (1-m)*input",
    "crosschannel_unet": "U-Net refining the cross-channel switching filter; unflagged values pass exactly",
    "crosschannel_s2d_unet": "crosschannel_unet with its U-Net at half resolution (space-to-depth, as FFDNet)",
    "crosschannel_s4d_cnn": "crosschannel_unet with a wide residual CNN at quarter resolution (4x4 space-to-depth)",
    "crosschannel_s4d_unet": "crosschannel_unet's full-resolution level over a wide residual CNN at quarter resolution",
}
