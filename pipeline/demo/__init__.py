"""The offline stand-ins: a demo corpus in the real MELD and IEMOCAP raw layouts (`corpus`) and tiny
random-weight models (`tiny_models`). Kept empty, so each of the two DVC stages loads only its own."""
