/**
 * The French catalogue: every text the interface shows, by key. French is
 * the reference language; `en.ts` must define exactly the same keys (the
 * type checker enforces it). `{name}` placeholders are filled by `t()`.
 */
export const fr = {
  "app.title": "MiSS — messagerie sécurisée de santé",
  "app.name": "MiSS",

  "conn.connecting": "Connexion…",
  "conn.online": "Connecté",
  "conn.offline": "Hors ligne — nouvelle tentative dans {seconds} s",
  "conn.offline_now": "Hors ligne — nouvelle tentative…",
  "conn.stopped": "Déconnecté",
  "conn.retry": "Réessayer",

  "status.available": "Disponible",
  "status.busy": "Occupé·e",
  "status.on_call": "De garde",
  "status.off_duty": "Hors service",
  "presence.online": "en ligne",
  "presence.offline": "hors ligne",
  "presence.unknown": "présence inconnue",
  "status.label": "Mon statut",

  "enroll.heading": "Enregistrer cet appareil",
  "enroll.intro":
    "Votre administrateur vous a remis un code d'invitation (ou un autre de vos appareils un code de liaison) et la clé publique de l'autorité de vérification.",
  "enroll.server": "Serveur",
  "enroll.code": "Code d'invitation ou de liaison",
  "enroll.authority": "Clé publique de l'autorité",
  "enroll.label": "Nom de cet appareil",
  "enroll.label_default": "Navigateur",
  "enroll.passphrase": "Phrase secrète (au moins {min} caractères)",
  "enroll.passphrase_again": "Phrase secrète, une seconde fois",
  "enroll.passphrase_hint":
    "Elle chiffre les clés et l'historique de cet appareil dans ce navigateur. Elle n'est envoyée nulle part : si vous l'oubliez, il faudra enregistrer l'appareil à nouveau.",
  "enroll.submit": "Enregistrer l'appareil",
  "enroll.working": "Enregistrement…",
  "enroll.fingerprint": "Empreinte de la clé : {fingerprint}",

  "unlock.heading": "Déverrouiller MiSS",
  "unlock.who": "Appareil {device} de {user}",
  "unlock.passphrase": "Phrase secrète",
  "unlock.submit": "Déverrouiller",
  "unlock.working": "Vérification…",
  "unlock.forget": "Effacer cet appareil de ce navigateur",
  "unlock.forget_confirm":
    "Effacer les clés et l'historique de cet appareil de ce navigateur ? Les messages non envoyés seront perdus, et il faudra un nouveau code pour l'enregistrer.",

  "error.passphrase_short": "La phrase secrète doit compter au moins {min} caractères.",
  "error.passphrase_mismatch": "Les deux phrases secrètes diffèrent.",
  "error.passphrase_wrong": "Phrase secrète incorrecte.",
  "error.code_invalid": "Ce code est invalide, expiré ou déjà utilisé. Demandez-en un nouveau.",
  "error.code_missing": "Saisissez le code reçu.",
  "error.authority_invalid": "Cette clé d'autorité n'est pas valide (44 caractères en base64).",
  "error.authority_mismatch":
    "Le serveur annonce une autre clé d'autorité que celle saisie : rien n'a été envoyé. Vérifiez la clé avec votre administrateur.",
  "error.server_invalid": "Adresse de serveur invalide (ws:// ou wss://).",
  "error.unreachable": "Serveur injoignable. Vérifiez l'adresse et votre connexion, puis réessayez.",
  "error.too_many_devices":
    "Ce compte a déjà le nombre maximal d'appareils : révoquez-en un depuis un autre appareil.",
  "error.rate_limited": "Trop de tentatives : réessayez dans {seconds} s.",
  "error.rate_limited_short": "Trop de demandes : réessayez dans un instant.",
  "error.storage_unavailable": "Le serveur est momentanément indisponible : réessayez dans un instant.",
  "error.not_verified":
    "Votre compte n'est pas encore vérifié : un administrateur doit attester cet appareil.",
  "error.auth_failed": "Le serveur ne reconnaît pas cet appareil (révoqué ou inconnu).",
  "error.device_revoked": "Cet appareil a été révoqué. Enregistrez-le de nouveau avec un nouveau code.",
  "error.account_suspended": "Votre compte est suspendu. Contactez votre administrateur.",
  "error.session_replaced": "Cet appareil s'est connecté depuis un autre onglet ou une autre fenêtre.",
  "error.unsupported_version": "Ce serveur parle une autre version du protocole. Mettez l'application à jour.",
  "error.unknown_user": "Aucun clinicien vérifié ne correspond.",
  "error.unverified_peer": "{name} n'est pas un clinicien vérifié ({reason}) : rien ne lui est envoyé.",
  "error.no_devices": "{name} n'a aucun appareil vérifié : le message ne peut être lu par personne.",
  "error.too_large": "Message trop long.",
  "error.generic": "Erreur : {message}",
  "error.other_tab": "MiSS est déjà ouvert dans un autre onglet ou une autre fenêtre de ce navigateur : continuez là-bas, ou fermez-le puis rechargez cette page.",
  "error.offline": "Hors ligne : réessayez une fois la connexion rétablie.",
  "error.storage": "Le navigateur refuse le stockage local (navigation privée ?). MiSS ne peut pas fonctionner.",
  "error.not_secure":
    "Cette page n'est pas servie dans un contexte sécurisé (https ou localhost) : le navigateur refuse la cryptographie.",

  "unverified_reason.missing": "pas d'attestation",
  "unverified_reason.malformed": "attestation illisible",
  "unverified_reason.signature": "attestation non signée par votre autorité",
  "unverified_reason.not_yet_valid": "attestation pas encore valable",
  "unverified_reason.expired": "attestation expirée",
  "unverified_reason.wrong_user": "attestation d'une autre personne",
  "unverified_reason.stale": "attestation plus ancienne qu'une autre déjà vue",
  "unverified_reason.device_not_attested": "cet appareil n'est pas encore attesté",

  "self.unverified":
    "Votre compte n'est pas encore vérifié : un administrateur doit attester cet appareil ({device}). En attendant, vous ne pouvez ni écrire ni recevoir.",
  "self.check_again": "Vérifier de nouveau",

  "nav.new": "Nouvelle conversation",
  "nav.devices": "Mes appareils",
  "nav.settings": "Réglages",
  "nav.back": "Retour",
  "nav.close": "Fermer",

  "list.empty": "Aucune conversation. Cherchez un confrère dans l'annuaire pour commencer.",
  "list.unread": "{count} non lu(s)",
  "list.draft": "Brouillon",
  "list.you": "Vous : ",

  "conv.none": "Choisissez une conversation.",
  "conv.empty": "Aucun message. Écrivez le premier.",
  "conv.placeholder": "Votre message",
  "conv.send": "Envoyer",
  "conv.today": "Aujourd'hui",
  "conv.yesterday": "Hier",
  "conv.safety": "Numéro de sécurité",
  "conv.verified_badge": "vérifié en personne",
  "conv.rpps": "RPPS {rpps}",
  "conv.paused": "Envoi suspendu jusqu'à ce que vous acceptiez le changement de clés.",

  "msg.pending": "En attente d'envoi",
  "msg.pending_keys": "En attente : changement de clés à accepter",
  "msg.accepted": "Envoyé",
  "msg.failed": "Non envoyé : {reason}",
  "msg.delivered": "Distribué",
  "msg.delivered_count": "Distribué sur {count}/{total} appareils",
  "msg.delivered_to": "Distribué à {device} le {time}",
  "msg.refused_to": "Refusé par {device} le {time} ({reason})",
  "msg.refused": "Refusé par un appareil",
  "msg.from_device": "depuis {device}",
  "msg.other_device": "envoyé depuis un autre de vos appareils",

  "refusal.sender_unverified": "l'expéditeur n'a pas pu être vérifié",
  "refusal.undecryptable": "indéchiffrable",

  "keys.warning": "Les appareils de {name} ont changé : {change}.",
  "keys.warning_own": "Vos appareils ont changé : {change}.",
  "keys.advice":
    "Comparez vos numéros de sécurité (en personne ou par téléphone) avant d'accepter. Rien ne sera envoyé d'ici là.",
  "keys.accept": "Accepter le changement",
  "keys.added": "{count} ajouté(s)",
  "keys.changed": "{count} avec de NOUVELLES CLÉS",
  "keys.substituted": "{count} avec des clés non signées par l'autorité",
  "keys.removed": "{count} retiré(s)",

  "search.heading": "Nouvelle conversation",
  "search.label": "Nom, RPPS, profession ou établissement (3 caractères au moins)",
  "search.none": "Aucun clinicien vérifié trouvé.",
  "search.searching": "Recherche…",
  "search.rpps": "RPPS {rpps}",

  "safety.heading": "Numéro de sécurité avec {name}",
  "safety.explain":
    "Comparez ces 60 chiffres avec ceux qu'affiche {name}, en personne ou de vive voix. S'ils sont identiques, personne ne s'interpose entre vous.",
  "safety.mark": "Marquer comme vérifié en personne",
  "safety.marked": "Vérifié en personne",
  "safety.loading": "Calcul…",

  "devices.heading": "Mes appareils",
  "devices.this": "cet appareil",
  "devices.attested": "attesté",
  "devices.not_attested": "pas encore attesté",
  "devices.enrolled": "enregistré le {date}",
  "devices.revoke": "Révoquer",
  "devices.revoke_confirm":
    "Révoquer définitivement l'appareil « {label} » ({device}) ? Il ne pourra plus se connecter ni recevoir de messages.",
  "devices.revoke_self_confirm":
    "Révoquer CET appareil ? Il sera déconnecté immédiatement et ne pourra plus se reconnecter.",
  "devices.revoked": "Appareil révoqué.",
  "devices.link": "Lier un nouvel appareil",
  "devices.link_code": "Code de liaison : {code}",
  "devices.link_expires": "Valable jusqu'au {time}, une seule fois. Saisissez-le sur le nouvel appareil avec la clé de l'autorité ; un administrateur devra ensuite l'attester.",
  "devices.unnamed": "sans nom",

  "settings.heading": "Réglages",
  "settings.identity": "Identité",
  "settings.user": "Utilisateur : {user}",
  "settings.device": "Appareil : {device}",
  "settings.server": "Serveur : {server}",
  "settings.authority": "Empreinte de l'autorité : {fingerprint}",
  "settings.language": "Langue",
  "settings.notifications": "Notifications du bureau",
  "settings.notifications_enable": "Activer les notifications",
  "settings.notifications_on": "Activées : vous êtes prévenu·e des nouveaux messages quand l'onglet est masqué.",
  "settings.notifications_denied": "Refusées par le navigateur (modifiable dans ses réglages).",
  "settings.notifications_unsupported": "Non prises en charge par ce navigateur.",
  "settings.bundle": "Empreinte de l'application",
  "settings.bundle_explain":
    "Cette application est servie par le serveur MiSS : son opérateur pourrait la remplacer. Comparez cette empreinte avec celle publiée par votre établissement (miss-admin web-hash).",
  "settings.lock": "Verrouiller",

  "notify.title": "Nouveau message",
  "notify.body": "{name} vous a écrit.",

  "time.at": "{date} à {time}",
} as const;

export type MessageKey = keyof typeof fr;
export type Catalogue = Record<MessageKey, string>;
