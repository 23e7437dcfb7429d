"""Verifiable visual question answering: procedurally generated questions with exact answers
(counting, bar charts, geometry, arithmetic word problems) and MathVista/MathVerse-style files."""

from services.envs.visual_qa.benchmark import BenchmarkItem, load_benchmark, write_benchmark
from services.envs.visual_qa.env import VisualQAEnv, VisualQAOptions
from services.envs.visual_qa.generators import GENERATOR_KINDS, generate
from services.envs.visual_qa.questions import Draft, GenSpec, Problem

__all__ = [
    "GENERATOR_KINDS",
    "BenchmarkItem",
    "Draft",
    "GenSpec",
    "Problem",
    "VisualQAEnv",
    "VisualQAOptions",
    "generate",
    "load_benchmark",
    "write_benchmark",
]
