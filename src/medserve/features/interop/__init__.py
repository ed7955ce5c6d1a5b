"""Healthcare interoperability: FHIR R4 in and out of the records API, and CDS Hooks 2.0.

A version opts in by declaring a FHIR feature map in ``serving_config["fhir"]``
(:class:`medserve.features.interop.feature_map.FhirMap`):
where each feature comes from (a LOINC-coded
Observation, a Patient field, a coded Condition), how several values are reduced, the expected
UCUM unit, the risk bands that turn a probability into a qualitative risk, and the CDS hooks
it answers. Everything here is transport-free; ``serving/extensions/interop.py`` wires it to HTTP.
"""
