"""CWM config presets, the tokenizer with CWM's special tokens, and the pretrain / midtrain / SFT stages."""
