"""miss-adt: an HL7 v2 MLLP listener that turns a hospital's ADT feed
(IHE PAM-FR, HL7 v2.5) into MiSS notices to each patient's GP.

Modules, from the bottom up:

* :mod:`.hl7_events`: decoding and parsing one ADT message (MSH, EVN, PID,
  PD1, ROL, PV1, ZBE) into an :class:`~.hl7_events.AdtMessage`, or an
  :class:`~.hl7_events.Hl7Error` carrying the ERR segment's parts.
* :mod:`.mapping`: the TOML mapping (events, wards, French templates) and
  the notice it makes of a message; ``default_mapping.toml`` is the default.
* :mod:`.acks`: HL7 v2.5 ACK messages (MSA, ERR).
* :mod:`.store`: the durable SQLite state (answers by MSH-10, notices by
  key and movement, the spool).
* :mod:`.audit`: the JSON-lines audit log (no patient data).
* :mod:`.sender`: :class:`~.sender.NoticeSender` (what the SDK's client
  offers), :class:`~.sender.HubLink` (the connection), and which errors
  are transient.
* :mod:`.service`: what is done with each message, and the spool's retry.
* :mod:`.server`: the MLLP server and the configuration file.
* :mod:`.cli`: ``miss-adt serve`` and ``miss-adt check``.
"""
