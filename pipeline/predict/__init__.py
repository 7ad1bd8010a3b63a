"""Prediction on any video, above both stages: decode, embed with the run's backbone, label sliding windows with
its sequence model (``predictor``), and draw the labels on the video (``render``)."""
