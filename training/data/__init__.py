"""Data formats (EgoClip, EgoMCQ, chunked video store), video decoding and the synthetic egocentric generator.

Modules (import the one you need; nothing is re-exported so that ``video`` stays torch-free and light):

- ``taxonomy``: verb/noun classes, ``verbs.csv``/``nouns.csv``, multi-hot tags.
- ``synth``: ``SynthConfig``, ``generate_dataset``, ``render_clip``.
- ``egoclip``: ``ClipRecord``, ``read_egoclip``/``write_egoclip``, ``MCQEntry``, ``read_egomcq``/``write_egomcq``.
- ``video``: ``ChunkedVideoStore``, ``sample_times``, ``train_transform``, ``eval_transform`` (numpy + OpenCV).
- ``dataset``: ``EgoClipDataset``, ``EgoMCQDataset``, ``collate`` (torch).
- ``cli``: ``egovlp data synth | contact-sheet | inspect``.
"""
