"""The core: torch, NumPy and Pillow only, no Ray and no storage. Colour maths, the model, colorize (prepare /
predict_ab / compose), metrics, the checkpoint format, image decode / encode and the metadata carried beside
the pixels."""
