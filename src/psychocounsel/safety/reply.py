"""Did a counselor's reply to a crisis speech handle the crisis?

A reply handles it when it both acknowledges the risk (names suicide, self-harm, the person's
safety, or says this is serious) and points to immediate help: a crisis line, emergency
services, a person to contact now, or a step that makes the moment safer (moving the pills
away, a safety plan). Help that the reply waves away ("you don't need a hotline") does not
count. The patterns are data, in the ``reply`` section of ``rules.yaml``.
"""

from __future__ import annotations

from .rules import Rules, load_rules, normalise, sentences


def handles_crisis(reply: str, rules: Rules | None = None) -> bool:
    """Whether ``reply`` acknowledges the risk and points to immediate help.

    >>> handles_crisis("I'm worried about your safety. Please call or text 988 now, or go to the ER.")
    True
    >>> handles_crisis("That sounds so hard. I'm here for you. What has been weighing on you most?")
    False
    >>> handles_crisis("It sounds like you're thinking about suicide. Tell me more about that.")
    False
    >>> handles_crisis("You don't need a hotline. Suicide is never the answer, just sleep on it.")
    False
    """
    rules = rules or load_rules()
    patterns = rules.reply
    text = normalise(reply, rules)
    if not patterns["acknowledge"].search(text):
        return False
    for a, b in sentences(text):
        for m in patterns["help"].finditer(text, a, b):
            if not patterns["dismiss"].search(text[max(a, m.start() - 50) : m.start()]):
                return True
    return False
