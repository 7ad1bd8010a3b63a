"""The synthetic dataset's motions: pairs of classes that only the order of their frames tells apart.

Kept apart from the generator so that evaluation can report pair accuracy without loading OpenCV.
"""

MOTIONS = [
    ("MoveRight", "MoveLeft"),
    ("Grow", "Shrink"),
    ("RotateClockwise", "RotateAnticlockwise"),
    ("MoveDown", "MoveUp"),
    ("Brighten", "Darken"),
    ("OrbitClockwise", "OrbitAnticlockwise"),
]
UNPAIRED_MOTION = "Pulse"  # grows then shrinks: its own reversal, used for an odd class count
