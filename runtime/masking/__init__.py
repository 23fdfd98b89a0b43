"""Product masks: SAM (segment-anything) with automatic product choice, a weight-free classical
fallback, and refinement shared by both."""
