"""Sample quality: the reference classifier, the offline Inception, CLIP, style control and the evaluator."""
