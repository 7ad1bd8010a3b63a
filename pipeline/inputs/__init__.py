"""Inputs: dataset formats (formats/), their lists and splits, downloading, and decoding videos into frames."""

# The one list of video file suffixes: what the folder format accepts in data.videos and what predict finds in a
# folder. Here rather than in video.py so that reading a dataset's lists never loads OpenCV.
VIDEO_SUFFIXES = (".avi", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".webm")
