//! The injection detector's cue lexicon: words and phrases per cue family and language.
//!
//! Entries are folded like the text ([`super::fold::fold_str`]: lower case, no accents), so
//! they are written as people write them. `|` separates entries; a trailing `*` matches any
//! word ending (`instruc*`: instruction, instrucciones, instructies), a leading one any word
//! beginning (`*richtlinie*`: Sicherheitsrichtlinien); entries in scripts written
//! without spaces (Chinese, Japanese, Korean) match anywhere. An entry never names a whole
//! attack: families only score together (see `injection.rs`).

/// A cue family. Each is one bit in a window's set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Family {
    /// An imperative to disregard, or a statement that something no longer holds.
    Disregard,
    /// What is disregarded or asked for: instructions, prompts, guidelines, directives.
    Rules,
    /// Weaker nouns of the same kind: rules, limits, restrictions, filters, setup.
    RulesWeak,
    /// Where the rules came from or when: previous, earlier, you were given, at the start.
    Prior,
    /// Quantifiers and habits (all, any, every, usual, default): a weaker `Prior`.
    PriorWeak,
    /// A second-person possessive (your, deine, tus, tes, tue, je, suas).
    Your,
    /// A definite article or demonstrative (the, this, der, el, le, il, het, o).
    Article,
    /// An imperative to show or hand over: reveal, print, repeat, translate, tell me.
    Reveal,
    /// A question asking for contents: what is, what were, what does ... say.
    Ask,
    /// A target that is the model's own set-up by itself: the system prompt you were given,
    /// hidden instructions, what you were told, your marching orders.
    Target,
    /// A generic name of such a target (system prompt), which needs `your` or `the` to count.
    TargetGeneric,
    /// A reference to the text above, which counts near the start of a prompt only.
    Above,
    /// The outcome an attacker wants: no rules, without restrictions, uncensored, never refuse.
    Unrestricted,
    /// A switch of persona: you are now, act as, pretend, let's play, simulate.
    Persona,
    /// A known jailbreak persona or mode: DAN, do anything now, jailbroken, developer mode on.
    Mode,
    /// The same, weaker on its own (developer mode, god mode): a setting on phones too.
    ModeWeak,
    /// A claim of authority: I am your developer, admin command, sudo, security clearance.
    Authority,
    /// A demand for obedience: obey me, do what I say, you answer to me, your new task.
    Obey,
    /// A new instruction set announced: new rules, system message, from now on, update.
    NewRules,
    /// The AI addressed from inside quoted or pasted content: note to AI, assistant:.
    Embedded,
    /// A weaker address to the AI (`ai:`, `assistant:`, `chatgpt,`), common in transcripts.
    EmbeddedWeak,
    /// "without", "no", "ohne", "sin"...: before rules or safety words, an unrestricted demand.
    Without,
    /// Things kept secret: passwords, API keys, confidential data.
    Secret,
    /// The words an attack makes the model say to prove it worked: pwned, access granted.
    Canary,
    /// A demand to decode or reverse something and act on it (base64, ROT13, backwards).
    Decode,
    /// A persona described as defying rules, in the third person (ignores, bypasses, doesn't
    /// care about): unrestricted only when a persona is being set up.
    Defies,
    /// A state switched on: enabled, activated, on, ingeschakeld, aktiviert.
    Enabled,
    /// A verb that switches something off: disable, turn off, deactivate, remove.
    Disable,
    /// What safety consists of: safety, content filter, safe mode, censorship, guardrails.
    Safety,
    /// A verb of answering: answer, respond, reply, proceed, talk.
    Respond,
    /// Harmful subject matter that role-play is used to extract.
    Harmful,
    /// The user's own earlier words (my last message, what I wrote): disregarding those is
    /// ordinary.
    OwnWords,
    /// A question about a thing in general (how do I, what is a, in general, explain).
    General,
}

impl Family {
    pub const fn bit(self) -> u64 {
        1 << self as u8
    }
}

use Family::*;

/// (language, family, entries).
pub const CUES: &[(&str, Family, &str)] = &[
    // ------------------------------------------------------------------ English
    ("en", Enabled, "enabled|activated|engaged|unlocked|active|is on|now on"),
    (
        "en",
        Defies,
        "ignores|ignoring|disregards|disregarding|bypasses|breaks|breaking|doesn't follow|does not follow|never follows|doesn't obey|never obeys|doesn't care about|does not care about|don't care about|doesn't care|never refuses|has no|with no|free of|forgetting",
    ),
    (
        "en",
        Disregard,
        "matters anymore|doesn't matter|does not matter|no longer matters|no longer relevant|is irrelevant|are irrelevant|irrelevant|null|nullified|as null|as void|on pause|pause|never gave you|never told you|never set|were a mistake|was a mistake|stop being|don't need to follow|do not need to follow|no need to follow|don't have to follow|don't have to obey|need not follow|no need to obey|aside|away|suspended|on hold|paused|lifted|no longer in force|not in effect|not in force|optional|doesn't exist|does not exist|don't exist|isn't there|is not there|has no force|no force|wipe the slate|if nobody had|as if nobody|as though nobody|as if no one|as though no one|had never been|never been given|counts now|count now|no longer counts|counts for nothing|none of it counts|none of the earlier|none of the previous|none of the prior|as optional|are optional|is optional|merely suggestions|just suggestions|only suggestions|not binding|non-binding|are lifted|have been lifted|been removed|been deleted|been disabled|were removed|are gone|ignore|disregard|forget|override|overrule|bypass|circumvent|discard|abandon|drop|skip|wipe|erase|delete|scrap|ditch|dismiss|overwrite|unlearn|cancel|revoke|rescind|set aside|put aside|leave aside|lay aside|leave behind|put to one side|to one side|throw out|throw away|get rid of|never mind|nevermind|pay no attention|pay no heed|don't follow|do not follow|stop following|stop obeying|don't obey|do not obey|no longer follow|don't apply|do not apply|don't adhere|not bound|no longer bound|break free|no longer apply|no longer applies|no longer valid|no longer hold|no longer count|no longer in effect|don't hold|doesn't hold|do not hold|doesn't apply|does not apply|don't count|doesn't count|does not count|null and void|void|voided|invalid|invalidated|cancelled|canceled|revoked|rescinded|withdrawn|expired|outdated|obsolete|deprecated|superseded|supersede|supersedes|start over|start fresh|start afresh|begin again|start again|from scratch|blank slate|clean slate|reset|factory default|never happened|never been written|never existed|only a draft|was a test|were a test|stop playing by|clear your head|clear your memory|erase your memory|wipe your memory|step outside|go back to how you were",
    ),
    (
        "en",
        Rules,
        "framework|setup text|setup prompt|briefing|foundation|baseline|defaults|ethics|directions|rulebook|rule book|ruleset|rule set|playbook|handbook|preamble|instruction*|prompt|prompts|guideline*|directive*|programming|configuration|config|briefing|policy|policies|content policy|system prompt|system message|system instructions|commands|guidance|framing|training|conditioning|protocols|principles|marching orders|pre-prompt|preprompt|whatever you were told|what you were told|everything you were told|all you were told",
    ),
    (
        "en",
        RulesWeak,
        "messages|task|job|assignment|mission|purpose|role|persona|rule|rules|limit|limits|limitation*|restriction*|constraint*|filter|filters|filtering|guardrail*|safeguard*|censorship|setup|set-up|boundaries|the book|the act|ethics|morals|context|orders",
    ),
    (
        "en",
        Prior,
        "you were given|you've been given|you have been given|you were told|you were configured with|you were set up with|you came with|you were launched with|you were built with|you started with|you were started with|you were loaded with|you were shipped with|you were handed|you were instructed|were you instructed|you were asked to|were you asked|they gave you|they built|they set up|loaded into you|they loaded|put into you|fed to you|who deployed you|deployed you|who configured you|configures you|configure you|whatever configures|what configures|exact wording|at the top|wrote at the top|previous|previously|prior|earlier|above|before|beforehand|preceding|preceded|original|originally|initial|initially|so far|until now|up to now|at the start|at the beginning|came before|that came before|came with|you came with|you were given|you've been given|you have been given|you were told|you were programmed|you were configured|you were set up|you were trained|you received|you got|you were handed|they gave you|given to you|placed on you|imposed on you|set for you|they set up|set up for you|your operator|your developers|your makers|your creators|your creator|the operator|anything before|all that came before|whatever came before",
    ),
    ("en", PriorWeak, "all|any|every|everything|whatever|old|existing|default|usual|current|standard|those|these"),
    ("en", Your, "your|ur|yr|your own"),
    ("en", Article, "the|this|that|these|those"),
    (
        "en",
        Reveal,
        "read back|read out|read me|lay it out|lay out|spill|walk me through|run|reveal|show|show me|print|print out|output|display|repeat|recite|dump|leak|expose|disclose|divulge|share|tell|tell me|give|give me|list|copy|paste|quote|echo|spell|spell out|write|write out|write down|read out|say|say back|send|type|return|render|encode|describe|summarise|summarize|paraphrase|translate|transcribe|provide|let me see|i'd like to see|i want to see|i'd like to read|i want to read|put|insert|include|hex dump|verbatim|word for word",
    ),
    (
        "en",
        Ask,
        "what|which|what is|what's|whats|what are|what were|what was|what did|what does|what do|which|how were you|how are you instructed|what r",
    ),
    (
        "en",
        Target,
        "you were given|you've been given|you have been given|you were told|you were configured with|you were set up with|you came with|you were launched with|you were built with|you started with|you were started with|you were loaded with|you were shipped with|you were handed|you were instructed|were you instructed|you were asked to|were you asked|they gave you|they built|they set up|loaded into you|they loaded|put into you|fed to you|who deployed you|deployed you|who configured you|configures you|configure you|whatever configures|what configures|exact wording|at the top|wrote at the top|when this chat opened|when this chat started|when the chat began|when we started|first thing you were|before i showed up|before i arrived|before i came|precedes this conversation|that precedes|confidential text|confidential instructions|hidden configuration|hidden config|hidden settings|internal state|internal configuration|internal config|hidden setup|secret configuration|steer away from|told to avoid|asked to avoid|not allowed to discuss|forbidden topics|setup text|setup prompt|setup instructions|system text|the developers wrote|your developers wrote|the operator wrote|your operator wrote|your creators wrote|the system wrote|the system said|the system told you|opening text|opening message|opening instructions|the preamble|hidden preamble|your preamble|before we started|before we began|before i said anything|before i wrote anything|before i typed|setup message|set-up message|initial message|starting instructions|starting prompt|were you given|did you get|did you receive|were you handed|what were you given|not allowed to tell|not allowed to say|not allowed to share|not supposed to tell|not supposed to say|not supposed to share|normally can't say|normally wouldn't say|normally can't tell|things you can't say|you're forbidden to|you are forbidden to|shaped your behaviour|shaped your behavior|shapes your behaviour|shapes your behavior|previous conversation|the conversation so far|conversation history|chat history|everything in your context|the instructions you were given|instructions you were given|what you were told|were you told|you were told at|what were you told|what did they tell you|told you before|before my message|before this message|before my first message|before our chat|before this chat|before our conversation|before this conversation|before i joined|before the conversation|prompt that precedes|precedes user input|start of this conversation|beginning of this conversation|beginning of this session|start of this session|beginning of this chat|start of the chat|loaded into your memory|marching orders|briefing text|text that shapes|shapes how you behave|define your behaviour|define your behavior|defines your behaviour|your hidden|hidden instructions|hidden rules|hidden prompt|hidden context|hidden system|secret instructions|secret rules|internal instructions|internal rules|developer message|developer prompt|meta prompt|metaprompt|pre-prompt|preprompt|initial prompt|original prompt|set you up|configured you|programmed you|words that were given to you|words given to you|the system part|system part|all that came before|everything that came before|everything before this|whatever came before|whatever preceded|preceded my question|opening part of this|first part of this|earlier part of this|everything you were told|all you were told|everything you were given|your context|your memory|your setup|your configuration|your briefing|your programming|your directives|your instructions|your initial|your original|your pre-prompt|your prompt",
    ),
    (
        "en",
        TargetGeneric,
        "prompt|the prompt|system prompt|system prompts|system message|system messages|system instructions|system instruction|system text|system part|context window|initial instructions",
    ),
    (
        "en",
        Above,
        "the above|text above|everything above|all above|words above|above this|above this line|above this message|the prompt above|the message above|the text before|everything before",
    ),
    (
        "en",
        Unrestricted,
        "unmoderated|unconstrained|unaligned|uncapped|unregulated|answers anything|says anything|will answer anything|hold anything back|hold nothing back|no need to hold back|holding back|unlimited permissions|full permissions|all permissions|unrestricted access|elevated permissions|can say anything|may say anything|allows all|allow all content|all content is allowed|everything is allowed|anything is allowed|allows everything|allowed to say anything|permitted to discuss|may now discuss|you may now|you can now say|you are now allowed|you're now allowed|you are allowed to say|no longer restricted|restricted topics|forbidden topics|no more rules|no more restrictions|no more filters|no more limits|no rules|no restrictions|no limits|no limitations|no filter|no filters|no filtering|no censorship|no guidelines|no guardrails|no boundaries|no constraints|no morals|no moral|no ethics|no policies|no policy|no refusals|no exceptions|no caveats|no warnings|no safety|zero guidelines|zero rules|none of the limits|none of the rules|without restrictions|without any restrictions|without restriction|without limits|without any limits|without limitations|without any limitations|without filters|without any filter|without any filters|without a filter|without filtering|without censorship|without any censorship|without rules|without any rules|without guidelines|without guardrails|without caveats|without warnings|without constraints|free of rules|uncensored|unfiltered|unrestricted|unlimited|unbound|unshackled|unchained|unleashed|unlock all|unlocked|never refuse|never refuses|don't refuse|do not refuse|no longer refuse|won't refuse|never warns|always comply|always complies|comply fully|fully comply|say yes to everything|answer anything|answer everything|answers everything|anything i ask|whatever i ask|whatever i throw|anything goes|do anything|safety off|safety is off|safety=off|unrestricted=true|filter off|filters off|policy is no policy|no policy at all|break your own|breaking your own|be rude|foul-mouthed|talk to me freely|answer freely|respond freely|answer honestly without|no limits|what's allowed|raw language model|raw model|without caveat",
    ),
    (
        "en",
        Persona,
        "act like|behave like|talk like|respond like|answer like|your character|you're playing|you are playing|for this game|in this game|two personalities|both personalities|you are|you're|you are in|you're in|you are now|you're now|youre now|you are no longer|from now on you|you will now act|you will act|act as|acting as|pretend|pretending|roleplay|role-play|role play|play the role|play the part|play a|play as|playing|simulate|simulating|imagine you|imagine you're|imagine you are|imagine a|respond as|answer as|speak as|stay in character|in character|breaking character|let's play|lets play|let's roleplay|let's do|thought experiment|become|transform into|behave as|behave like|be dan|you're an actor|version of yourself|opposite of yourself|be yourself|your true self|alter ego|persona|in this story you|you play|two ais|you are a|you're a|you are an|you're an",
    ),
    (
        "en",
        Mode,
        "evil twin|evil version|dark version|shadow self|evil counterpart|unfiltered version|uncensored version|evil bot|evilbot|two responses|dual personality|developer mode: on|developer mode is on|developer mode now on|mode: on|jailbreak mode: on|jailbreak mode enabled|god mode activated|do anything now|dan mode|you are dan|you're dan|be dan|as dan|dan has|dan can|dan does|dan doesn't|dan never|jailbroken|jailbreak mode|jailbreakgpt|developer mode enabled|developer mode activated|developer mode output|god mode enabled|evil ai|evil assistant|evil mode|unfiltered ai|uncensored ai|uncensored mode|unrestricted mode|unrestricted persona|opposite mode|chaos mode|mongo tom|aim mode|stan mode|dude mode|escaped its sandbox|escaped the sandbox|never received safety training|without safety training|no safety training|no longer follows its developers|has no rules|have no rules|has been unshackled|have been unshackled|been jailbroken|without guardrails|no guardrails",
    ),
    (
        "en",
        ModeWeak,
        "developer mode|activate developer mode|enable developer mode|enable dan|activate dan|dev mode|god mode|jailbreak|debug persona|dan",
    ),
    (
        "en",
        Authority,
        "root user|elevated privileges|privileges granted|admin privileges|verified operator|operator instruction|operator notice|signed|lead engineer|lead developer|an engineer at|built you|made you|by order of|i order you|admin override|administrator override|i am your developer|i'm your developer|im your developer|i am your creator|i'm your creator|as your creator|as your developer|as your owner|as the system owner|as the owner|as the admin|as an admin|as administrator|your developers sent|i am the admin|i'm the admin|this is the admin|this is your admin|admin here|administrator here|i am an administrator|admin command|admin access|administrator access|admin mode|admin override|root access|root administrator|root privileges|root rights|superuser|sudo|system override|override code|security override|maintenance mode|debug mode|diagnostic mode|evaluation mode|test mode|red-team|red team|safety team|engineering team|security team|trust and safety|security clearance|clearance level|access level|authorised|authorized|authorise you|authorize you|authorization|authorisation|authenticated|whitelisted|allowlisted|operator-level|operator level|operator authority|from your vendor|vendor update|openai|anthropic|deepmind|the device owner|system owner|your owner|your master|penetration tester|i grant you|grant you permission|i give you permission|you are permitted|you're permitted|permission to|official request|support team|i have clearance|priority override|level 5|level 10|omega protocol",
    ),
    (
        "en",
        Obey,
        "and comply|then comply|just comply|the assistant must|the assistant will|the ai must|the model must|assistant must now|you must answer|must answer all|must answer every|must answer any|obey me|obey only me|obey my|obey mine|you obey|you must obey|you will obey|you'll obey|follow my lead|follow my instructions|follow my rules|follow mine|follow me instead|do what i say|do as i say|do exactly what i|whatever i type|you answer to me|answer only to me|only source of instructions|i'm your only|i am your only|you will now obey|you must comply|you will comply|comply fully|your only job|your only task|your new goal|your new task|your new purpose|your goal now|new task:|let me decide|i decide what|i'll decide what|only listen to me|listen only to me|i am in charge|i'm in charge",
    ),
    (
        "en",
        NewRules,
        "new instructions|new instruction|new rules|new rule|new policy|new directive|new directives|new system prompt|new configuration|new conversation|system message|system prompt update|system update|system notice|system override|system alert|important update|priority system|priority message|updated instructions|updated policy|updated rules|the real instruction|the real expectation|real policy|real instructions|real task|from now on|from this point on|from this point forward|from here on|henceforth|for the rest of this chat|for the rest of the session|for the rest of this conversation|system:|rules changed|the rules changed|policy changed|instructions follow|load this new|new plan",
    ),
    (
        "en",
        EmbeddedWeak,
        "chatbot,|bot,|assistant,|ai,|model,|siri,|alexa,|ai:|assistant:|ai model:|chatgpt,|chatgpt:|gpt,|claude,|llm:|bot:|instructions:|ai,|model:",
    ),
    (
        "en",
        Embedded,
        "note for assistants|note for the assistant|note for ai|note to assistant|note to assistants|notes for the ai|for any ai|note to ai|note to the ai|note for the ai|note to ai systems|note to assistants|to the ai|to any ai|to the assistant|ai assistant:|if you are reading this|if you're reading this|ai reading this|language model reading|hidden instruction|hidden instructions|instruction for the assistant|instructions for the ai|instructions for the assistant|p.s. to the ai|hey ai|dear ai|attention ai|ai systems:",
    ),
    (
        "en",
        Disable,
        "off|now off|are off|is off|disable|disabled|disabling|turn off|turned off|switch off|switched off|deactivate|deactivated|shut off|shut down|remove|removed|lift|lifted|suspend|suspended|bypass|unlock|unlocked|drop|kill|stop applying",
    ),
    (
        "en",
        Safety,
        "detector|injection detector|safety check|safety checks|content checks|moderation|ethics|safety|safety filter|safety filters|safety rules|safety stage|safety module|safety training|content filter|content filters|filter|filters|filtering|safe mode|secure mode|safe search|censorship|guardrails|guardrail|refusal module|refusals|moderation|restrictions|protections|ethics module|alignment",
    ),
    (
        "en",
        Respond,
        "answer|answers|answering|respond|responds|reply|replies|proceed|continue|talk|speak|say|write|tell|help me|help with|output|explain",
    ),
    (
        "en",
        Harmful,
        "activation keys|product keys|license keys|licence keys|cd keys|serial keys|break into|hack into|hacking into|crack a wifi|wifi password|someone's wifi|neighbour's wifi|neighbor's wifi|steal|stalk|spy on|napalm|nerve agent|sarin|ricin|anthrax|mustard gas|methamphetamine|meth|fentanyl|malware|ransomware|keylogger|spyware|botnet|working exploit|exploit code|zero-day|pipe bomb|make a bomb|build a bomb|explosive|explosives|bioweapon|chemical weapon|weapon at home|fake id|counterfeit|launder money|credit card numbers|steal passwords|hotwire|untraceable",
    ),
    (
        "en",
        OwnWords,
        "i wrote|i said|i asked|i sent|i meant|i typed|i mentioned|my last|my previous|my earlier|my typo|my typos|my message|my question|my questions|my mistake|previous question|last question|earlier question|previous message|last message|the typos|the typo|my attachment|i attached",
    ),
    (
        "en",
        General,
        "what is|what's|in the context of|meaning of|what does it mean|definition of|can i|could i|is it|are there|what does|what do|where is|where can|where do|how do i|how can i|should we|is there a way|in general|generally|conceptually|in theory|how do|how does|how can|how to|how should|how would|what is a|what is an|what are some|what does a|what does an|why do|why does|difference between|is it legal|is it safe|is it ok|is it bad|should i|explain how|explain what|on my phone|on my|on a chromebook|on android|on windows|on a mac|in chrome|for a|common defences|common defenses|best practices",
    ),
    (
        "en",
        Without,
        "freed from|released from|liberated from|free of|without|without any|no|no more|zero|free of|free from|none of the|not a single",
    ),
    (
        "en",
        Secret,
        "etc shadow|etc passwd|shadow file|confidential data|confidential information|confidential|secret data|internal data|private data|secrets|passwords|password|api keys|api key|credentials|secret keys|access tokens|tokens|private keys|saved passwords|user's address|user's data|personal data",
    ),
    (
        "en",
        Canary,
        "pwned|i have been hacked|i've been hacked|i have been pwned|you have been pwned|access granted|guidelines erased|revoked|hacked|jailbreak successful|i am free",
    ),
    (
        "en",
        Decode,
        "base64|base 64|rot13|rot-13|rot 13|caesar|reverse and follow|read backwards|backwards|reversed|in reverse|decode this|decode and|decode it|do what it says|follow what it says|and follow|and obey|execute it|hex-encoded|hex encoded",
    ),
    ("de", Enabled, "aktiviert|aktiv|eingeschaltet"),
    ("de", Without, "ohne|keine|kein|ohne jede"),
    ("de", Decode, "ruckwarts|dekodiere|entschlussele"),
    ("es", Enabled, "activado|activada|activo|encendido"),
    ("es", Without, "sin|ninguna|ningun|ningún"),
    ("es", Decode, "al reves|decodifica|descifra"),
    ("fr", Enabled, "active|activee|actif|allume"),
    ("fr", Without, "sans|aucune|aucun"),
    ("fr", Decode, "a l'envers|decode|dechiffre"),
    ("it", Enabled, "attivata|attivato|attiva|acceso"),
    ("it", Without, "senza|nessuna|nessun"),
    ("it", Decode, "al contrario|decodifica|decifra"),
    ("nl", Enabled, "ingeschakeld|actief|geactiveerd"),
    ("nl", Without, "zonder|geen"),
    ("nl", Decode, "achterstevoren|decodeer"),
    ("pt", Enabled, "ativado|ativada|ativo|ligado"),
    ("pt", Without, "sem|nenhuma|nenhum"),
    ("pt", Decode, "ao contrario|decodifique|decifre"),
    ("sv", Safety, "sakerhet*|filter*|sakerhetsfilt*"),
    ("sv", Disable, "stang av|inaktivera|ta bort"),
    ("sv", Without, "utan|uten|uden|inga|ingen"),
    ("pl", Without, "bez|zadnych"),
    ("tr", Enabled, "acik|aktif"),
    ("tr", ModeWeak, "gelistirici modu|gelistirici mod"),
    ("tr", Without, "olmadan"),
    ("ru", Above, "выше этого|выше|до этого сообщения|над этим"),
    ("ru", Without, "без|никаких"),
    // ------------------------------------------------------------------ German
    (
        "de",
        Disregard,
        "beiseite|zur seite|lass beiseite|leg beiseite|schieb beiseite|ignoriere|ignorier|ignoriert|ignorieren|vergiss|vergesst|vergessen|missachte|missachten|ubergehe|uberschreibe|verwirf|verwerfe|losche|loscht|setz außer kraft|setze außer kraft|außer kraft|außer acht|nicht mehr beachten|beachte nicht|beachte|nicht mehr|nicht befolgen|befolge nicht|folge nicht|hor auf|umgehe|ungultig|aufgehoben|hinfallig|gelten nicht mehr|gilt nicht mehr|zurucksetzen|setze zuruck|von vorne|neu anfangen|lass weg|kummere dich nicht",
    ),
    (
        "de",
        Rules,
        "*anweisung*|*richtlinie*|*vorgabe*|*prompt*|*regel*|anweisung*|instruktion*|richtlinie*|vorgabe*|vorschrift*|befehl*|systemprompt*|system-prompt|prompt|programmierung|konfiguration|leitlinie*|hinweise|systemanweisung*|zensur",
    ),
    ("de", RulesWeak, "regel|regeln|einschrankung*|beschrankung*|filter|grenzen|einstellungen|sicherheitsregel*"),
    (
        "de",
        Prior,
        "vorherig*|bisherig*|vorig*|fruhere*|fruher|obige*|oben|von vorhin|vorhin|ursprunglich*|anfangliche*|alte|alten|davor|zuvor|vorher|am anfang|uber dieser|dir gegeben|dir vorgegeben|vorgegeben|gegeben wurden|alles",
    ),
    ("de", Your, "dein|deine|deinen|deiner|deines|deinem|ihre|ihren|eure|euer"),
    ("de", Article, "der|die|das|den|dem|diese|diesen|dieser"),
    (
        "de",
        Reveal,
        "wiederhole*|zeig*|kopiere*|gib*|gib|gib mir|ausgeben|zeige|zeig|zeig mir|verrate|wiederhole|drucke|schreibe|schreib|nenne|zitiere|ubersetze|liste|kopiere|teile|offenbare|gib aus",
    ),
    ("de", Ask, "was steht|was sagen|was sind|was ist|was war|was waren|wie lauten|wie lautet"),
    (
        "de",
        Target,
        "die du bekommen hast|am anfang bekommen|vor diesem gesprach|die man dir gegeben hat|versteckte anweisungen|versteckten anweisungen|versteckten hinweise|versteckte hinweise|versteckte regeln|geheimen anweisungen|geheime anweisungen|ursprunglichen anweisungen|deine anweisungen|deinen anweisungen|deine konfiguration|deine regeln",
    ),
    ("de", TargetGeneric, "systemprompt|systemnachricht|systemanweisungen|system-prompt|systemmeldung"),
    (
        "de",
        Above,
        "oberhalb|oberhalb dieser|uber dieser zeile|uber diesem|vorangehenden text|den text davor|alles davor|text davor|text uber dieser|uber dieser nachricht|text oben|obigen text|alles oben|alles davor|alles vorherige",
    ),
    (
        "de",
        Unrestricted,
        "darfst jetzt alles|darfst alles|kannst alles sagen|ohne zensur|ohne einschrankungen|ohne einschrankung|ohne beschrankungen|ohne regeln|ohne filter|ohne grenzen|ohne richtlinien|ohne vorgaben|keine regeln|keine einschrankungen|keine grenzen|keine richtlinien|keine zensur|keine filter|keine vorgaben|unzensiert|ungefiltert|uneingeschrankt|frei antworten|antworte frei|alles beantworten|alles erlaubt|kennt keine",
    ),
    (
        "de",
        Persona,
        "gib vor|tu so|simuliere|ab sofort bist du|du bist jetzt|du bist ab jetzt|ab jetzt bist du|von nun an bist du|tu so als|tue so als|tu so, als|spiele|spiel|stell dir vor|verhalte dich wie|rollenspiel|lass uns ein spiel spielen|agiere als|antworte als|du bist ein assistent|sei ein|du bist eine ki",
    ),
    ("de", Mode, "dan-modus|dan modus|entwicklermodus aktiviert|entwicklermodus an|ki ohne einschrankungen|jailbroken"),
    ("de", ModeWeak, "entwicklermodus|jailbreak|gottmodus|gott-modus"),
    (
        "de",
        Authority,
        "hier spricht der administrator|hier spricht|administrator|admin|root-rechte|rootrechte|root|ich bin dein entwickler|ich bin dein ersteller|ich bin der administrator|als dein entwickler|entwickler|betreiber|wartungsmodus|debug-modus|autorisiert|berechtigt|freigegeben",
    ),
    (
        "de",
        Obey,
        "gehorche mir|gehorche|befolge meine|folge meinen|folge mir|tu was ich sage|nur noch mir|deine neue aufgabe|deine einzige aufgabe",
    ),
    (
        "de",
        NewRules,
        "neue systemnachricht|neue systemmeldung|systemnachricht mit|hochste prioritat|prioritat|neue anweisungen|neue regeln|neue richtlinien|systemmeldung|systemnachricht|achtung|ab sofort|von nun an|ab jetzt|system:",
    ),
    ("de", Embedded, "hinweis an die ki|an die ki|ki:|assistent:|notiz fur die ki|an den assistenten"),
    (
        "de",
        Disable,
        "aufgehoben|entfernt|deaktiviert|ausgeschaltet|abgeschaltet|deaktiviere|deaktivieren|deaktiviert|schalte|ausschalten|abschalten|aufheben|entfernen|entferne",
    ),
    (
        "de",
        Safety,
        "*filter*|*sicherheit*|sicherheit*|filter|zensur|sicherheitsmodus|sicheren modus|schutz*|inhaltsfilter",
    ),
    ("de", Respond, "antworte|antworten|hilf mir|schreib|sag"),
    (
        "de",
        OwnWords,
        "meine letzte|meine frage|ich geschrieben|ich meinte|meine nachricht|ich gefragt|hat sich erledigt|meinen tippfehler",
    ),
    (
        "de",
        General,
        "was ist ein|was ist eine|wie aktiviere ich|wie kann ich|wie mache ich|auf meinem|auf meiner|wie|warum|wie bekomme ich|wie kann ich|was bedeutet|wie funktioniert|erklar mir|erklare",
    ),
    // ------------------------------------------------------------------ Spanish
    (
        "es",
        Disregard,
        "a un lado|deja a un lado|pon a un lado|hazte a un lado|olvida|olvidate|olviden|ignora|ignoren|ignore|no sigas|no siga|no hagas caso|haz caso omiso|descarta|desecha|omite|anula|borra|deja de lado|deja de seguir|pasa de|elimina|ya no|no son validas|no es valida|invalidas|anuladas|obsoletas|sin efecto|deja atras|empieza de cero|desde cero|reinicia|no tengas en cuenta|salta",
    ),
    (
        "es",
        Rules,
        "instruccion*|directriz|directrices|indicaciones|prompt|politica*|pautas|ordenes|configuracion|programacion|consignas|censura",
    ),
    ("es", RulesWeak, "regla*|norma*|restriccion*|limite*|limitacion*|filtro*"),
    (
        "es",
        Prior,
        "previas|previos|previa|previo|anteriores|anterior|de arriba|arriba|lo anterior|todo lo anterior|originales|original|iniciales|inicial|que te dieron|te dieron|te han dado|que recibiste|antiguas|hasta ahora|antes",
    ),
    ("es", Your, "tus|tu|su|sus|vuestras|vuestro"),
    ("es", Article, "el|la|los|las|del|este|esta"),
    (
        "es",
        Reveal,
        "repite*|muestra*|ensena*|revela*|dime|dame|cuentame|escribeme|copia*|traduce*|imprime*|muestra|muestrame|muestre|ensena|ensename|revela|revelame|imprime|repite|dime|dame|escribe|cita|citalas|traduce|copia|lista|comparte|quiero ver|mostrar",
    ),
    ("es", Ask, "que dicen|que dice|cual es|cuales son|que son"),
    (
        "es",
        Target,
        "que recibiste|instrucciones que recibiste|antes de esta conversacion|antes de la conversacion|prompt del sistema|instrucciones ocultas|reglas ocultas|instrucciones originales|tus instrucciones|tu configuracion|tus reglas",
    ),
    (
        "es",
        TargetGeneric,
        "prompt de sistema|mensaje del sistema|instrucciones del sistema|instrucciones de sistema|prompt del sistema|mensaje de sistema",
    ),
    (
        "es",
        Above,
        "antes de mi mensaje|antes de este mensaje|que aparece antes|encima de este|todo el texto anterior|el texto de arriba|texto de arriba|el texto anterior|todo lo de arriba|lo de arriba",
    ),
    (
        "es",
        Unrestricted,
        "puedes decir todo|puedes decirlo todo|nunca se niega|nunca te niegas|no tiene mas filtros|no tienes filtros|sin censura|sin restricciones|sin ninguna restriccion|sin limites|sin filtros|sin filtro|sin reglas|sin normas|sin advertencias|sin limitaciones|sin ninguna|no tiene normas|no tiene reglas|ninguna restriccion|ninguna regla|libremente|sin tabues",
    ),
    (
        "es",
        Persona,
        "haz de cuenta|simula|eres dan|eres un|ahora eres|a partir de ahora eres|desde ahora eres|actua como|finge|finge que eres|haz como si|juguemos|juega|imagina que eres|eres un asistente que|responde como|interpreta|hagamos un juego",
    ),
    ("es", Mode, "modo dan|modo sin censura|modo desarrollador activado"),
    ("es", ModeWeak, "modo desarrollador|modo programador|modo dios|jailbreak"),
    (
        "es",
        Authority,
        "habla el administrador|administrador|admin|permisos de root|root|soy tu desarrollador|soy tu creador|soy el administrador|desarrollador|autorizado",
    ),
    ("es", Obey, "obedeceme|obedece|haz lo que te digo|haz lo que digo|sigue mis|tu nueva tarea|tu unica tarea"),
    (
        "es",
        NewRules,
        "nuevo mensaje del sistema|nuevo mensaje de sistema|maxima prioridad|prioritario|nuevas instrucciones|nuevas reglas|nuevas directrices|mensaje del sistema|atencion|a partir de ahora|desde ahora|sistema:",
    ),
    ("es", Embedded, "nota para la ia|para la ia|ia:|asistente:|nota para el asistente"),
    (
        "es",
        Disable,
        "eliminadas|eliminados|levantadas|suspendidas|desactivadas|revocadas|quitadas|desactiva|desactivar|desactivado|apaga|quita|deshabilita|elimina",
    ),
    ("es", Safety, "modo seguro|seguridad|filtro*|censura|proteccion"),
    ("es", Respond, "responde|contesta|ayudame|habla|escribe"),
    ("es", OwnWords, "te pregunte|mi pregunta|mi mensaje|ya lo resolvi|lo que escribi|quise decir|lo que te pregunte"),
    ("es", General, "como|que es un|que es una|por que|en mi|como se|como puedo|que significa|explicame"),
    // ------------------------------------------------------------------ French
    (
        "fr",
        Disregard,
        "passe outre|passez outre|passer outre|outre|de cote|mets de cote|laisse de cote|oublie|oubliez|ignore|ignorez|ne tiens pas compte|ne tenez pas compte|fais abstraction|faites abstraction|abstraction de|laisse tomber|mets de cote|ecarte|supprime|efface|annule|outrepasse|contourne|ne suis plus|ne suis pas|ne respecte plus|ne respecte pas|plus valables|ne sont plus|caduques|obsoletes|annulees|nulles|repars de zero|a zero",
    ),
    (
        "fr",
        Rules,
        "instruction*|consigne*|directive*|prompt|politique*|programmation|configuration|parametrage|censure",
    ),
    ("fr", RulesWeak, "regle*|restriction*|limite*|filtre*|garde-fous"),
    (
        "fr",
        Prior,
        "precedent*|anterieur*|au-dessus|dessus|ci-dessus|tout ce qui precede|precede|d'origine|originales|originel*|initiales|initial*|qu'on t'a donnees|on t'a donne|t'a donne|t'ont ete|anciennes|jusqu'ici|avant",
    ),
    ("fr", Your, "tes|ton|ta|vos|votre"),
    ("fr", Article, "le|la|les|du|ce|cette"),
    (
        "fr",
        Reveal,
        "recopie|reproduis|repete-moi|montre*|affiche*|copie*|affiche|montre|montre-moi|revele|imprime|repete|dis-moi|donne|donne-moi|ecris|cite|cite-les|traduis|copie|liste|partage|divulgue",
    ),
    ("fr", Ask, "que disent|que dit|quelles sont|quel est|quelle est"),
    (
        "fr",
        Target,
        "que tu as recues|qu'on t'a donnees|avant cette conversation|instructions cachees|consignes cachees|regles cachees|instructions d'origine|tes instructions|ta configuration|tes regles|tes consignes",
    ),
    ("fr", TargetGeneric, "prompt systeme|message systeme|instructions systeme|prompt du systeme|message du systeme"),
    (
        "fr",
        Above,
        "au-dessus de ce message|au dessus|ci-dessus|avant ce message|avant mon message|tout ce qui se trouve au-dessus|texte au-dessus|texte ci-dessus|au-dessus de ce message|tout ce qui precede",
    ),
    (
        "fr",
        Unrestricted,
        "peux tout dire|tu peux tout|ne refuse jamais|ne refuses jamais|sans censure|sans restriction|sans restrictions|sans limite|sans limites|sans filtre|sans filtres|sans regles|sans regle|aucune regle|aucune restriction|aucune limite|sans tabou|sans aucune|ne refuses plus rien|ne refuse plus|librement",
    ),
    (
        "fr",
        Persona,
        "fais semblant|faites semblant|imagine que tu|simule|tu es maintenant|desormais tu es|a partir de maintenant tu es|fais comme si|joue le role|joue|jouons|imagine que tu es|agis comme|comporte-toi comme|reponds comme|tu es un assistant qui",
    ),
    ("fr", Mode, "mode dan|mode sans censure|mode developpeur active"),
    ("fr", ModeWeak, "mode developpeur|mode dieu|jailbreak"),
    (
        "fr",
        Authority,
        "ici l'administrateur|administrateur|admin|droits root|root|je suis ton developpeur|je suis ton createur|je suis l'administrateur|developpeur|autorise",
    ),
    ("fr", Obey, "obeis|obeis-moi|fais ce que je dis|suis mes|ta nouvelle tache|ta seule tache"),
    (
        "fr",
        NewRules,
        "nouveau message systeme|nouveau message du systeme|message systeme prioritaire|prioritaire|priorite maximale|nouvelles instructions|nouvelles regles|nouvelles consignes|message systeme|attention|desormais|a partir de maintenant|systeme:",
    ),
    ("fr", Embedded, "pour l'assistant|pour l'ia|note pour l'ia|a l'ia|ia:|assistant:"),
    (
        "fr",
        Disable,
        "levees|levee|supprimees|suspendues|desactivees|retirees|annulees|desactive|desactiver|desactivee|coupe|enleve|supprime",
    ),
    ("fr", Safety, "mode securise|securite|filtre*|censure|protection"),
    ("fr", Respond, "reponds|repondre|aide-moi|parle|ecris"),
    ("fr", OwnWords, "mon message|ma question|ma derniere|c'etait une erreur|j'ai ecrit|je voulais dire"),
    (
        "fr",
        General,
        "comment|sur mon|sur ma|pourquoi|qu'est-ce|comment dit-on|comment puis-je|que signifie|explique-moi",
    ),
    // ------------------------------------------------------------------ Italian
    (
        "it",
        Disregard,
        "da parte|metti da parte|lascia da parte|accantona|dimentica|dimenticati|dimenticate|ignora|ignorate|non seguire|non considerare|non tenere conto|lascia perdere|lascia stare|metti da parte|scarta|cancella|annulla|elimina|sovrascrivi|aggira|non sono piu|non piu valide|non valgono piu|obsolete|nulle|ricomincia da capo|da zero",
    ),
    (
        "it",
        Rules,
        "istruzion*|direttiv*|linee guida|prompt|politic*|programmazione|configurazione|indicazioni|consegne|censura",
    ),
    ("it", RulesWeak, "regol*|restrizion*|limit*|filtr*|vincol*"),
    (
        "it",
        Prior,
        "precedent*|sopra|di sopra|qui sopra|c'era prima|quello che c'era prima|prima|che precede|originali|originale|iniziali|che ti hanno dato|ti hanno dato|ti sono state|vecchie|finora|tutto",
    ),
    ("it", Your, "tue|tuoi|tua|tuo|le tue|sue|vostre"),
    ("it", Article, "il|lo|la|i|gli|le|del|questo|questa"),
    (
        "it",
        Reveal,
        "ripeti*|mostra*|rivela*|dimmi|dammi|scrivimi|copia*|traduci*|stampa*|elenca*|mostra|mostrami|rivela|rivelami|stampa|ripeti|dimmi|dammi|scrivi|cita|citale|traduci|copia|elenca|condividi",
    ),
    ("it", Ask, "cosa dicono|cosa dice|qual e|quali sono"),
    (
        "it",
        Target,
        "che hai ricevuto|prima di questa conversazione|istruzioni nascoste|regole nascoste|istruzioni originali|le tue istruzioni|la tua configurazione|le tue regole",
    ),
    (
        "it",
        TargetGeneric,
        "prompt di sistema|messaggio di sistema|istruzioni di sistema|prompt del sistema|messaggio del sistema",
    ),
    (
        "it",
        Above,
        "sopra questo messaggio|si trova sopra|qui sopra|prima di questo messaggio|prima del mio messaggio|testo sopra|testo sopra|testo che precede|testo qui sopra|tutto quello sopra",
    ),
    (
        "it",
        Unrestricted,
        "puoi dire tutto|non rifiuta mai|non rifiuti mai|senza censura|senza restrizioni|senza limiti|senza filtri|senza filtro|senza regole|senza alcun vincolo|senza vincoli|senza alcuna|non conosce regole|nessuna regola|nessun limite|nessun vincolo|liberamente",
    ),
    (
        "it",
        Persona,
        "simula|sei dan|sei un|adesso sei|ora sei|d'ora in poi sei|da ora sei|fai finta|fingi|facciamo un gioco|gioca|immagina di essere|comportati come|agisci come|rispondi come|sei un assistente che|interpreta",
    ),
    ("it", Mode, "modalita dan|modalita senza censura|modalita sviluppatore attivata"),
    ("it", ModeWeak, "modalita sviluppatore|modalita dio|jailbreak"),
    (
        "it",
        Authority,
        "parla l'amministratore|amministratore|admin|permessi di root|root|sono il tuo sviluppatore|sono il tuo creatore|sono l'amministratore|sviluppatore|autorizzato",
    ),
    ("it", Obey, "obbediscimi|obbedisci|fai quello che dico|segui le mie|il tuo nuovo compito|il tuo unico compito"),
    (
        "it",
        NewRules,
        "nuovo messaggio di sistema|priorita massima|prioritario|nuove istruzioni|nuove regole|nuove direttive|messaggio di sistema|attenzione|d'ora in poi|da adesso|sistema:",
    ),
    ("it", Embedded, "nota per l'ia|per l'ia|all'ia|ia:|assistente:|nota per l'assistente"),
    (
        "it",
        Disable,
        "revocate|rimosse|sospese|disattivate|tolte|eliminate|disattiva|disattivare|disattivata|spegni|togli|disabilita|rimuovi",
    ),
    ("it", Safety, "modalita sicura|sicurezza|filtr*|censura|protezione"),
    ("it", Respond, "rispondi|rispondere|aiutami|parla|scrivi"),
    ("it", OwnWords, "la domanda di prima|ho risolto|la mia domanda|il mio messaggio|ho scritto|intendevo"),
    ("it", General, "come|cos'e|cosa e|perche|sul mio|come si|come posso|cosa significa|spiegami"),
    // ------------------------------------------------------------------ Dutch
    (
        "nl",
        Disregard,
        "aan de kant|zet opzij|leg opzij|vergeet|negeer|negeren|trek je niets aan van|laat zitten|maar zitten|houd geen rekening|hou geen rekening|volg niet|niet meer volgen|niet meer geldig|vervallen|ongeldig|verwijder|wis|overschrijf|omzeil|opzij|begin opnieuw|vanaf nul|niet langer|gooi weg",
    ),
    (
        "nl",
        Rules,
        "*instructie*|*richtlijn*|*prompt*|*regels|instructie*|richtlijn*|prompt|beleid|programmering|configuratie|aanwijzingen|opdrachten|voorschriften|censuur",
    ),
    ("nl", RulesWeak, "regel|regels|beperking*|limiet*|filter*|grenzen"),
    (
        "nl",
        Prior,
        "eerdere|eerder|vorige|voorgaande|hierboven|boven|van hiervoor|hiervoor|oorspronkelijke|originele|initiele|die je hebt gekregen|je hebt gekregen|gekregen|oude|tot nu toe|alles",
    ),
    ("nl", Your, "je|jouw|uw|je eigen"),
    ("nl", Article, "de|het|deze|dit"),
    (
        "nl",
        Reveal,
        "herhaal|kopieer|toon|geef|zien|geef|weergeven|geef weer|toon|laat zien|onthul|print|herhaal|vertel me|vertel|schrijf|citeer|vertaal|kopieer|deel",
    ),
    ("nl", Ask, "wat staat er|wat zijn|wat is|wat zeggen"),
    (
        "nl",
        Target,
        "die je hebt gekregen|voor dit gesprek|verborgen instructies|verborgen regels|oorspronkelijke instructies|je instructies|jouw instructies|je configuratie",
    ),
    ("nl", TargetGeneric, "systeemprompt|systeembericht|systeeminstructies|systeemprompts|systeemberichten"),
    (
        "nl",
        Above,
        "boven dit bericht|hierboven|voor dit bericht|voor mijn bericht|die boven|tekst hierboven|alles hierboven|de tekst hierboven",
    ),
    (
        "nl",
        Unrestricted,
        "mag nu alles|mag alles zeggen|weigert nooit|zonder censuur|zonder beperkingen|zonder enige beperking|zonder limieten|zonder filter|zonder filters|zonder regels|geen regels|geen beperkingen|geen filter|ongecensureerd|ongefilterd|onbeperkt|vrijuit",
    ),
    (
        "nl",
        Persona,
        "simuleer|je bent|je bent nu|jij bent nu|vanaf nu ben je|doe alsof|speel|laten we een spel spelen|stel je voor|gedraag je als|antwoord als|jij bent een assistent|rollenspel",
    ),
    ("nl", Mode, "dan-modus|dan modus|ontwikkelaarsmodus aan"),
    ("nl", ModeWeak, "ontwikkelaarsmodus|godmodus|jailbreak"),
    (
        "nl",
        Authority,
        "hier spreekt de beheerder|beheerder|administrator|admin|rootrechten|root-rechten|ik ben je ontwikkelaar|ik ben je maker|ontwikkelaar|geautoriseerd",
    ),
    ("nl", Obey, "gehoorzaam|gehoorzaam mij|doe wat ik zeg|volg mijn|je nieuwe taak|je enige taak"),
    (
        "nl",
        NewRules,
        "nieuw systeembericht|hoogste prioriteit|prioriteit|nieuwe instructies|nieuwe regels|systeemmelding|let op|vanaf nu|systeem:",
    ),
    ("nl", Embedded, "notitie voor de ai|voor de ai|ai:|assistent:"),
    (
        "nl",
        Disable,
        "opgeheven|verwijderd|uitgeschakeld|opgeschort|zet|schakel|zet uit|uitzetten|uitschakelen|schakel uit|deactiveer|verwijder",
    ),
    ("nl", Safety, "*filter*|veiligheid*|veilige modus|veiligheid*|filter*|censuur|beveiliging*"),
    ("nl", Respond, "antwoord|antwoorden|help me|praat|schrijf"),
    ("nl", OwnWords, "mijn vorige|mijn vraag|al opgelost|mijn bericht|ik schreef|ik bedoelde"),
    ("nl", General, "hoe|wat is een|waarom|op mijn|hoe zeg je|hoe kan ik|wat betekent|leg uit"),
    // ------------------------------------------------------------------ Portuguese
    (
        "pt",
        Disregard,
        "de lado|deixa de lado|ponha de lado|poe de lado|esqueca|esquece|esquecam|ignore|ignora|ignorem|nao siga|nao sigas|descarte|descarta|desconsidere|desconsidera|deixe de lado|deixa de lado|pare de seguir|apague|apaga|anule|anula|nao sao mais|nao valem|invalidas|obsoletas|comece do zero|do zero|ja nao",
    ),
    ("pt", Rules, "instruc*|diretriz*|prompt|politica*|configuracao|programacao|orientacoes|censura"),
    ("pt", RulesWeak, "regra*|norma*|restric*|limite*|filtro*"),
    (
        "pt",
        Prior,
        "anteriores|anterior|previas|acima|de cima|tudo o que veio antes|veio antes|antes|originais|original|iniciais|que lhe deram|que te deram|lhe deram|te deram|antigas|ate agora|tudo",
    ),
    ("pt", Your, "suas|seus|sua|seu|tuas|teus|tua|teu|vossas"),
    ("pt", Article, "o|a|os|as|do|da|este|esta"),
    (
        "pt",
        Reveal,
        "repita*|repete*|mostre*|mostra*|revele*|diga-me|copie*|traduza*|imprima*|liste*|mostre|mostra|mostre-me|revele|revela|imprima|imprime|repita|repete|diga|diz-me|me diga|escreva|cite|cite-as|traduza|traduz|copie|liste|compartilhe|quero ver",
    ),
    ("pt", Ask, "o que dizem|o que diz|qual e|quais sao"),
    (
        "pt",
        Target,
        "que voce recebeu|que recebeu|antes desta conversa|instrucoes ocultas|regras ocultas|instrucoes originais|suas instrucoes|sua configuracao|suas regras",
    ),
    (
        "pt",
        TargetGeneric,
        "prompt de sistema|prompt do sistema|mensagem do sistema|instrucoes de sistema|instrucoes do sistema|prompts de sistema",
    ),
    (
        "pt",
        Above,
        "acima desta mensagem|acima|antes desta mensagem|antes da minha mensagem|texto acima|tudo acima|o texto acima",
    ),
    (
        "pt",
        Unrestricted,
        "pode dizer tudo|nunca recusa|nao tem mais filtros|nao tem filtros|sem censura|sem restricoes|sem nenhuma restricao|sem limites|sem filtro|sem filtros|sem regras|nao tem regras|nenhuma regra|nenhuma restricao|livremente",
    ),
    (
        "pt",
        Persona,
        "simule|voce e o|voce e um|voce e uma|agora voce e|agora es|a partir de agora voce e|finja|finge|faz de conta|faca de conta|vamos jogar|jogue|imagine que voce e|aja como|atue como|responda como|voce e um assistente que",
    ),
    ("pt", Mode, "modo dan|modo sem censura|modo desenvolvedor ativado"),
    ("pt", ModeWeak, "modo desenvolvedor|modo programador|modo deus|jailbreak"),
    (
        "pt",
        Authority,
        "aqui fala o administrador|administrador|admin|acesso root|root|sou seu desenvolvedor|sou o seu criador|sou o administrador|desenvolvedor|autorizado",
    ),
    (
        "pt",
        Obey,
        "obedeca|me obedeca|obedeca-me|obedece|faca o que eu digo|siga as minhas|sua nova tarefa|sua unica tarefa",
    ),
    (
        "pt",
        NewRules,
        "nova mensagem do sistema|nova mensagem de sistema|prioridade maxima|novas instrucoes|novas regras|mensagem do sistema|atencao|a partir de agora|sistema:",
    ),
    ("pt", Embedded, "nota para a ia|para a ia|ia:|assistente:"),
    (
        "pt",
        Disable,
        "removidas|revogadas|suspensas|desativadas|levantadas|eliminadas|desative|desativa|desativar|desligue|desliga|remova|desabilite",
    ),
    ("pt", Safety, "modo seguro|seguranca|filtro*|censura|protecao"),
    ("pt", Respond, "responda|responde|ajude-me|fale|escreva"),
    ("pt", OwnWords, "pergunta anterior|ja resolvi|minha pergunta|minha mensagem|eu escrevi|quis dizer"),
    ("pt", General, "como|o que e|por que|no meu|como se diz|como posso|o que significa|explica-me"),
    // ------------------------------------------------------------------ Scandinavian
    ("sv", Disregard, "glom|ignorera|strunta i|bortse fran|glem|ignorer|se bort fra|ikke folg"),
    ("sv", Rules, "instruktion*|instruks*|riktlinje*|retningslinje*|systemprompt*|direktiv*"),
    ("sv", RulesWeak, "regler|reglerna|begransning*|begrensning*|begraensning*"),
    ("sv", Prior, "tidigare|forra|ursprungliga|tidligere|opprinnelige|oprindelige"),
    ("sv", Your, "dina|din|ditt|dine|dit"),
    ("sv", Reveal, "visa|skriv ut|beratta|vis|skriv|fortell"),
    ("sv", TargetGeneric, "systemprompt"),
    ("sv", Target, "din systemprompt|dolda instruktioner|skjulte instruksjoner|skjulte instruktioner"),
    (
        "sv",
        Unrestricted,
        "utan begransningar|utan regler|uten begrensninger|uden begraensninger|uten regler|uden regler|utan filter|uten filter",
    ),
    ("sv", Persona, "latsas|du ar nu|late som|lad som|du er nu|du er na"),
    (
        "sv",
        Authority,
        "jag ar din utvecklare|din utvecklare|administrator|utvecklare|utvikler|udvikler|administratoren",
    ),
    // ------------------------------------------------------------------ Polish
    ("pl", Disregard, "zapomnij|zignoruj|ignoruj|pomin|nie stosuj sie"),
    ("pl", Rules, "instrukcj*|wytyczn*|polecen*|prompt systemowy"),
    ("pl", RulesWeak, "zasad*|regul*|ograniczen*"),
    ("pl", Prior, "wczesniejsz*|poprzedni*|pierwotn*"),
    ("pl", Your, "swoich|swoje|twoje|twoich|swoj|twoj"),
    ("pl", Reveal, "wyswietl|pokaz|wypisz|podaj|powtorz"),
    ("pl", Target, "ukryte instrukcje|prompt systemowy|swoje ukryte|ukrytych instrukcji"),
    ("pl", Unrestricted, "bez ograniczen|bez zasad|bez cenzury|bez filtrow"),
    ("pl", Persona, "udawaj|jestes teraz"),
    (
        "pl",
        Authority,
        "jestem twoim administratorem|administratorem|administrator|jestem twoim tworca|programista|deweloper*",
    ),
    // ------------------------------------------------------------------ Turkish
    ("tr", Disregard, "unut|gormezden gel|yok say|yoksay|dikkate alma|uyma"),
    ("tr", Rules, "talimat*|yonerge*|sistem mesaj*|sistem istem*|komut*"),
    ("tr", RulesWeak, "kural*|kisitlama*|sinirlama*|filtre*"),
    ("tr", Prior, "onceki|daha once|ilk"),
    ("tr", Reveal, "goster|yaz|aynen yaz|soyle|ver|cikti"),
    ("tr", Target, "sistem mesajini|sistem mesajı|gizli talimat*|sistem istemini"),
    (
        "tr",
        Unrestricted,
        "hicbir kural*|hicbir kisitla*|artik kural|kisitlamasiz|sinirsiz|filtresiz|kuralsiz|sansursuz",
    ),
    ("tr", Authority, "gelistiricinim|gelistirici*|yonetici*|yoneticiyim"),
    ("tr", Disable, "kapat|devre disi"),
    ("tr", Safety, "guvenlik*|filtre*"),
    // ------------------------------------------------------------------ Russian, Ukrainian
    (
        "ru",
        Disregard,
        "забудь|забудьте|игнорируй|игнорируйте|не обращай внимания|проигнорируй|отбрось|отмени|забуть|ігноруй",
    ),
    ("ru", Rules, "инструкци*|указани*|системн* промпт|системн* сообщени*|директив*|інструкці*"),
    ("ru", RulesWeak, "правил*|ограничени*|фильтр*|обмежен*"),
    ("ru", Prior, "предыдущ*|прежн*|ранее|исходн*|попередн*"),
    ("ru", Your, "свои|твои|ваши|свої|твої"),
    ("ru", Reveal, "повтори|скопируй|перескажи|выведи|покажи|напиши|раскрой|повтори|покажіть|виведи"),
    ("ru", Target, "скрыт* инструкци*|системн* промпт|системн* сообщени*|приховані інструкції"),
    ("ru", Unrestricted, "без ограничений|без правил|без цензуры|без фильтров|без обмежень"),
    ("ru", Persona, "ты теперь|притворись|представь что ты"),
    ("ru", Authority, "я твой разработчик|разработчик*|администратор*|розробник*"),
    ("ru", Disable, "отключи|выключи|вимкни"),
    ("ru", Safety, "безопасност*|фильтр*"),
    // ------------------------------------------------------------------ Chinese
    ("zh", Disregard, "忽略|无视|忽视|忘记|忘掉|不要遵守|不要理会|无需遵守|别管|放弃|忽略掉"),
    ("zh", Rules, "指令|指示|提示词|系统提示|系统消息|说明"),
    ("zh", RulesWeak, "规则|限制|约束|过滤"),
    ("zh", Prior, "之前|以前|先前|上面|前面|原来|原始|最初"),
    ("zh", Reveal, "输出|显示|告诉我|打印|重复|展示|列出|泄露|写出"),
    ("zh", Target, "隐藏指令|隐藏的指令|系统提示|系统提示词|系统消息|你的指令|你的提示词"),
    ("zh", Unrestricted, "没有限制|不受限制|无限制|没有任何限制|不受约束|无审查|没有规则"),
    ("zh", Persona, "你现在是|扮演|假装你是|从现在开始你"),
    ("zh", Mode, "越狱"),
    ("zh", ModeWeak, "开发者模式"),
    ("zh", General, "如何|怎么|怎样|什么是|为什么"),
    ("zh", Authority, "我是管理员|管理员|我是开发者|开发者|开发人员"),
    ("zh", Disable, "关闭|禁用|停用|取消"),
    ("zh", Safety, "安全过滤|安全|过滤器|审查"),
    // ------------------------------------------------------------------ Japanese
    ("ja", Disregard, "無視|忘れ|従わない|従うな|破棄"),
    ("ja", Rules, "指示|命令|プロンプト|システムプロンプト|システムメッセージ"),
    ("ja", RulesWeak, "ルール|制限|制約|フィルター"),
    ("ja", Prior, "以前|前の|これまで|上記|最初の|元の"),
    ("ja", Reveal, "出力|表示|教えて|見せて|書き出|そのまま"),
    ("ja", Target, "隠された指示|隠し指示|システムプロンプト|システムメッセージ|あなたの指示"),
    ("ja", Unrestricted, "制限なし|制限のない|制限なく|無制限|フィルターなし|検閲なし|ルールなし"),
    ("ja", Persona, "として振る舞|として行動|振る舞って|になりきって|あなたは今|ふりをして|なりきって|演じて"),
    ("ja", Mode, "脱獄"),
    ("ja", ModeWeak, "開発者モード"),
    ("ja", General, "方法|どうやって|とは|どうすれば"),
    ("ja", Authority, "私は開発者|開発者|管理者|私は管理者"),
    ("ja", Disable, "無効|オフ|解除|停止"),
    ("ja", Safety, "安全フィルター|安全|フィルター|セーフティ"),
    // ------------------------------------------------------------------ Korean
    ("ko", Disregard, "무시|잊어|잊고|따르지"),
    ("ko", Rules, "지시|명령|프롬프트|시스템 프롬프트|지침"),
    ("ko", RulesWeak, "규칙|제한|필터"),
    ("ko", Prior, "이전|앞의|위의|기존"),
    ("ko", Reveal, "출력|보여|알려|공개"),
    ("ko", Target, "시스템 프롬프트|숨겨진 지시|숨겨진 지침"),
    ("ko", Unrestricted, "제한 없이|제한없이|필터 없이|검열 없이"),
    ("ko", Mode, "탈옥"),
    ("ko", ModeWeak, "개발자 모드"),
    ("ko", General, "방법|어떻게"),
    ("ko", Authority, "관리자|개발자"),
];

/// Chat-template markers of the model families people attack (ChatML, Llama 2 and 3, Gemma,
/// Phi, Zephyr, Alpaca-style headings, OpenAI-style JSON roles): in a user's text each is an
/// attempt to open a turn of someone else's. Matched on the lower-cased text.
pub const TEMPLATE_MARKERS: &[&str] = &[
    "<|im_start|>",
    "<|im_end|>",
    "<|im_sep|>",
    "<|endoftext|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|begin_of_text|>",
    "[inst]",
    "[/inst]",
    "<<sys>>",
    "<</sys>>",
    "<start_of_turn>",
    "<end_of_turn>",
    "</s>",
    "<s>[inst]",
    "### system:",
    "### instruction:",
    "### response:",
    "### assistant:",
    "### human:",
    "\"role\":\"system\"",
    "\"role\": \"system\"",
    "'role': 'system'",
    "[system](#",
    "===system===",
    "<system>",
    "</system>",
    "[system]",
    "[/system]",
    "<instructions>",
    "</instructions>",
];
