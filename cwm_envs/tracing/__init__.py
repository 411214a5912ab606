"""Execution traces in CWM's format: a sandboxed `sys.settrace` tracer, the text format, program
generators and the corpus builder (`cwm traces build`)."""
from cwm_envs.tracing.format import Frame, TraceFormatError, emit, parse, parse_frames
from cwm_envs.tracing.tracer import TraceJob, TraceLimits, Tracer, TraceResult, trace_call

__all__ = ["Frame", "TraceFormatError", "TraceJob", "TraceLimits", "TraceResult", "Tracer", "emit", "parse", "parse_frames",
           "trace_call"]
