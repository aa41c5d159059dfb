"""What-if replay: recorded admissions judged again under a candidate config and policies
(``portcullis replay``), reporting which requests would newly be denied, allowed or warned."""
