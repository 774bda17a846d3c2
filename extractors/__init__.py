"""Feature extractors: text (RoBERTa), audio (wav2vec2), face (MTCNN + FaceNet)."""
