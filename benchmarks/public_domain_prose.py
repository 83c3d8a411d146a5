"""Public-domain English prose for the MiniLM benchmarks, in two sets the tuner never sees.

Classic texts written out from memory, so a word may differ from the printed
editions. ``tune_minilm.py`` tunes on ``quality_minilm.PARAGRAPHS``, picks the
budget by a fixed rule on HELD_OUT, and reports the picked plan on CONFIRM:
three disjoint sets, so the final figure is measured on text that no choice
(the tuner's or the budget's) was made on.
"""

# Held-out paragraphs: the benchmark picks its budget on these (the tuner never sees them).
HELD_OUT = [
    # Herman Melville, Moby-Dick (1851), chapter 1
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, and "
    "nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of "
    "the world. It is a way I have of driving off the spleen and regulating the circulation. Whenever I find myself "
    "growing grim about the mouth; whenever it is a damp, drizzly November in my soul; whenever I find myself "
    "involuntarily pausing before coffin warehouses, and bringing up the rear of every funeral I meet; and "
    "especially whenever my hypos get such an upper hand of me, that it requires a strong moral principle to "
    "prevent me from deliberately stepping into the street, and methodically knocking people's hats off, then, I "
    "account it high time to get to sea as soon as I can. This is my substitute for pistol and ball. With a "
    "philosophical flourish Cato throws himself upon his sword; I quietly take to the ship. There is nothing "
    "surprising in this. If they but knew it, almost all men in their degree, some time or other, cherish very "
    "nearly the same feelings towards the ocean with me.",
    # Charles Dickens, A Tale of Two Cities (1859), book 1, chapter 1
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness, "
    "it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, it was the season of "
    "Darkness, it was the spring of hope, it was the winter of despair, we had everything before us, we had "
    "nothing before us, we were all going direct to Heaven, we were all going direct the other way; in short, the "
    "period was so far like the present period, that some of its noisiest authorities insisted on its being "
    "received, for good or for evil, in the superlative degree of comparison only. There were a king with a large "
    "jaw and a queen with a plain face, on the throne of England; there were a king with a large jaw and a queen "
    "with a fair face, on the throne of France. In both countries it was clearer than crystal to the lords of the "
    "State preserves of loaves and fishes, that things in general were settled for ever.",
    # Jane Austen, Pride and Prejudice (1813), chapter 1
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of "
    "a wife. However little known the feelings or views of such a man may be on his first entering a "
    "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
    "the rightful property of some one or other of their daughters. My dear Mr. Bennet, said his lady to him one "
    "day, have you heard that Netherfield Park is let at last? Mr. Bennet replied that he had not. But it is, "
    "returned she; for Mrs. Long has just been here, and she told me all about it. Mr. Bennet made no answer. Do "
    "you not want to know who has taken it? cried his wife impatiently. You want to tell me, and I have no "
    "objection to hearing it. This was invitation enough. Why, my dear, you must know, Mrs. Long says that "
    "Netherfield is taken by a young man of large fortune from the north of England; that he came down on Monday "
    "in a chaise and four to see the place, and was so much delighted with it that he agreed with Mr. Morris "
    "immediately; that he is to take possession before Michaelmas, and some of his servants are to be in the house "
    "by the end of next week.",
    # Abraham Lincoln, the Gettysburg Address (1863)
    "Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived in "
    "Liberty, and dedicated to the proposition that all men are created equal. Now we are engaged in a great civil "
    "war, testing whether that nation, or any nation so conceived and so dedicated, can long endure. We are met on "
    "a great battle-field of that war. We have come to dedicate a portion of that field, as a final resting place "
    "for those who here gave their lives that that nation might live. It is altogether fitting and proper that we "
    "should do this. But, in a larger sense, we can not dedicate, we can not consecrate, we can not hallow this "
    "ground. The brave men, living and dead, who struggled here, have consecrated it, far above our poor power to "
    "add or detract. The world will little note, nor long remember what we say here, but it can never forget what "
    "they did here. It is for us the living, rather, to be dedicated here to the unfinished work which they who "
    "fought here have thus far so nobly advanced. It is rather for us to be here dedicated to the great task "
    "remaining before us, that from these honored dead we take increased devotion to that cause for which they "
    "gave the last full measure of devotion, that we here highly resolve that these dead shall not have died in "
    "vain, that this nation, under God, shall have a new birth of freedom, and that government of the people, by "
    "the people, for the people, shall not perish from the earth.",
    # Henry David Thoreau, Walden (1854), "Where I Lived, and What I Lived For"
    "I went to the woods because I wished to live deliberately, to front only the essential facts of life, and "
    "see if I could not learn what it had to teach, and not, when I came to die, discover that I had not lived. I "
    "did not wish to live what was not life, living is so dear; nor did I wish to practise resignation, unless it "
    "was quite necessary. I wanted to live deep and suck out all the marrow of life, to live so sturdily and "
    "Spartan-like as to put to rout all that was not life, to cut a broad swath and shave close, to drive life "
    "into a corner, and reduce it to its lowest terms, and, if it proved to be mean, why then to get the whole "
    "and genuine meanness of it, and publish its meanness to the world; or if it were sublime, to know it by "
    "experience, and be able to give a true account of it in my next excursion. For most men, it appears to me, "
    "are in a strange uncertainty about it, whether it is of the devil or of God, and have somewhat hastily "
    "concluded that it is the chief end of man here to glorify God and enjoy him forever. Still we live meanly, "
    "like ants; though the fable tells us that we were long ago changed into men.",
    # Charles Darwin, On the Origin of Species (1859), the closing paragraph
    "It is interesting to contemplate an entangled bank, clothed with many plants of many kinds, with birds "
    "singing on the bushes, with various insects flitting about, and with worms crawling through the damp earth, "
    "and to reflect that these elaborately constructed forms, so different from each other, and dependent on each "
    "other in so complex a manner, have all been produced by laws acting around us. These laws, taken in the "
    "highest sense, being Growth with Reproduction; Inheritance which is almost implied by reproduction; "
    "Variability from the indirect and direct action of the external conditions of life, and from use and disuse; "
    "a Ratio of Increase so high as to lead to a Struggle for Life, and as a consequence to Natural Selection, "
    "entailing Divergence of Character and the Extinction of less-improved forms. Thus, from the war of nature, "
    "from famine and death, the most exalted object which we are capable of conceiving, namely, the production of "
    "the higher animals, directly follows. There is grandeur in this view of life, with its several powers, "
    "having been originally breathed into a few forms or into one; and that, whilst this planet has gone cycling "
    "on according to the fixed law of gravity, from so simple a beginning endless forms most beautiful and most "
    "wonderful have been, and are being, evolved.",
    # Charles Dickens, Bleak House (1853), chapter 1
    "London. Michaelmas term lately over, and the Lord Chancellor sitting in Lincoln's Inn Hall. Implacable "
    "November weather. As much mud in the streets as if the waters had but newly retired from the face of the "
    "earth, and it would not be wonderful to meet a Megalosaurus, forty feet long or so, waddling like an "
    "elephantine lizard up Holborn Hill. Smoke lowering down from chimney-pots, making a soft black drizzle, with "
    "flakes of soot in it as big as full-grown snowflakes, gone into mourning, one might imagine, for the death of "
    "the sun. Dogs, undistinguishable in mire. Horses, scarcely better; splashed to their very blinkers. Foot "
    "passengers, jostling one another's umbrellas in a general infection of ill temper, and losing their foot-hold "
    "at street-corners, where tens of thousands of other foot passengers have been slipping and sliding since the "
    "day broke (if this day ever broke), adding new deposits to the crust upon crust of mud, sticking at those "
    "points tenaciously to the pavement, and accumulating at compound interest. Fog everywhere. Fog up the river, "
    "where it flows among green aits and meadows; fog down the river, where it rolls defiled among the tiers of "
    "shipping and the waterside pollutions of a great and dirty city.",
    # Charlotte Brontë, Jane Eyre (1847), chapter 1
    "There was no possibility of taking a walk that day. We had been wandering, indeed, in the leafless shrubbery "
    "an hour in the morning; but since dinner (Mrs. Reed, when there was no company, dined early) the cold winter "
    "wind had brought with it clouds so sombre, and a rain so penetrating, that further out-door exercise was now "
    "out of the question. I was glad of it: I never liked long walks, especially on chilly afternoons: dreadful to "
    "me was the coming home in the raw twilight, with nipped fingers and toes, and a heart saddened by the "
    "chidings of Bessie, the nurse, and humbled by the consciousness of my physical inferiority to Eliza, John, "
    "and Georgiana Reed. The said Eliza, John, and Georgiana were now clustered round their mama in the "
    "drawing-room: she lay reclined on a sofa by the fireside, and with her darlings about her (for the time "
    "neither quarrelling nor crying) looked perfectly happy. Me, she had dispensed from joining the group; saying, "
    "She regretted to be under the necessity of keeping me at a distance; but that until she heard from Bessie, "
    "and could discover by her own observation, that I was endeavouring in good earnest to acquire a more "
    "sociable and childlike disposition, she really must exclude me from privileges intended only for contented, "
    "happy, little children.",
]


# Confirmation paragraphs: the final figure. Added after every earlier run, so no choice made so far has seen them,
# and the script reads them only to report the plan its rule selected on HELD_OUT (and, for comparison, every other
# row).
CONFIRM = [
    # Mary Shelley, Frankenstein (1818), letter 1
    "You will rejoice to hear that no disaster has accompanied the commencement of an enterprise which you have "
    "regarded with such evil forebodings. I arrived here yesterday, and my first task is to assure my dear sister "
    "of my welfare and increasing confidence in the success of my undertaking. I am already far north of London, "
    "and as I walk in the streets of Petersburgh, I feel a cold northern breeze play upon my cheeks, which braces "
    "my nerves and fills me with delight. Do you understand this feeling? This breeze, which has travelled from "
    "the regions towards which I am advancing, gives me a foretaste of those icy climes. Inspirited by this wind "
    "of promise, my daydreams become more fervent and vivid. I try in vain to be persuaded that the pole is the "
    "seat of frost and desolation; it ever presents itself to my imagination as the region of beauty and delight. "
    "There, Margaret, the sun is for ever visible, its broad disk just skirting the horizon and diffusing a "
    "perpetual splendour.",
    # Lewis Carroll, Alice's Adventures in Wonderland (1865), chapter 1
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do: once "
    "or twice she had peeped into the book her sister was reading, but it had no pictures or conversations in it, "
    "and what is the use of a book, thought Alice, without pictures or conversations? So she was considering in "
    "her own mind (as well as she could, for the hot day made her feel very sleepy and stupid), whether the "
    "pleasure of making a daisy-chain would be worth the trouble of getting up and picking the daisies, when "
    "suddenly a White Rabbit with pink eyes ran close by her. There was nothing so very remarkable in that; nor "
    "did Alice think it so very much out of the way to hear the Rabbit say to itself, Oh dear! Oh dear! I shall be "
    "late! But when the Rabbit actually took a watch out of its waistcoat-pocket, and looked at it, and then "
    "hurried on, Alice started to her feet, for it flashed across her mind that she had never before seen a "
    "rabbit with either a waistcoat-pocket, or a watch to take out of it, and burning with curiosity, she ran "
    "across the field after it, and fortunately was just in time to see it pop down a large rabbit-hole under the "
    "hedge.",
    # The Declaration of Independence (1776)
    "When in the Course of human events, it becomes necessary for one people to dissolve the political bands "
    "which have connected them with another, and to assume among the powers of the earth, the separate and equal "
    "station to which the Laws of Nature and of Nature's God entitle them, a decent respect to the opinions of "
    "mankind requires that they should declare the causes which impel them to the separation. We hold these "
    "truths to be self-evident, that all men are created equal, that they are endowed by their Creator with "
    "certain unalienable Rights, that among these are Life, Liberty and the pursuit of Happiness. That to secure "
    "these rights, Governments are instituted among Men, deriving their just powers from the consent of the "
    "governed. Prudence, indeed, will dictate that Governments long established should not be changed for light "
    "and transient causes; and accordingly all experience hath shewn, that mankind are more disposed to suffer, "
    "while evils are sufferable, than to right themselves by abolishing the forms to which they are accustomed.",
    # Arthur Conan Doyle, A Scandal in Bohemia (1891)
    "To Sherlock Holmes she is always the woman. I have seldom heard him mention her under any other name. In his "
    "eyes she eclipses and predominates the whole of her sex. It was not that he felt any emotion akin to love for "
    "Irene Adler. All emotions, and that one particularly, were abhorrent to his cold, precise but admirably "
    "balanced mind. He was, I take it, the most perfect reasoning and observing machine that the world has seen, "
    "but as a lover he would have placed himself in a false position. He never spoke of the softer passions, save "
    "with a gibe and a sneer. They were admirable things for the observer, excellent for drawing the veil from "
    "men's motives and actions. But for the trained reasoner to admit such intrusions into his own delicate and "
    "finely adjusted temperament was to introduce a distracting factor which might throw a doubt upon all his "
    "mental results. Grit in a sensitive instrument, or a crack in one of his own high-power lenses, would not be "
    "more disturbing than a strong emotion in a nature such as his.",
    # Charles Dickens, Great Expectations (1861), chapter 1
    "My father's family name being Pirrip, and my Christian name Philip, my infant tongue could make of both names "
    "nothing longer or more explicit than Pip. So, I called myself Pip, and came to be called Pip. I give Pirrip "
    "as my father's family name, on the authority of his tombstone and my sister, Mrs. Joe Gargery, who married "
    "the blacksmith. As I never saw my father or my mother, and never saw any likeness of either of them (for "
    "their days were long before the days of photographs), my first fancies regarding what they were like were "
    "unreasonably derived from their tombstones. The shape of the letters on my father's, gave me an odd idea "
    "that he was a square, stout, dark man, with curly black hair. From the character and turn of the "
    "inscription, Also Georgiana Wife of the Above, I drew a childish conclusion that my mother was freckled and "
    "sickly.",
    # Bram Stoker, Dracula (1897), chapter 1
    "Left Munich at 8:35 P.M., on 1st May, arriving at Vienna early next morning; should have arrived at 6:46, but "
    "train was an hour late. Buda-Pesth seems a wonderful place, from the glimpse which I got of it from the "
    "train and the little I could walk through the streets. I feared to go very far from the station, as we had "
    "arrived late and would start as near the correct time as possible. The impression I had was that we were "
    "leaving the West and entering the East; the most western of splendid bridges over the Danube, which is here "
    "of noble width and depth, took us among the traditions of Turkish rule. We left in pretty good time, and "
    "came after nightfall to Klausenburgh. Here I stopped for the night at the Hotel Royale. I had for dinner, or "
    "rather supper, a chicken done up some way with red pepper, which was very good but thirsty.",
    # Ralph Waldo Emerson, Self-Reliance (1841)
    "I read the other day some verses written by an eminent painter which were original and not conventional. The "
    "soul always hears an admonition in such lines, let the subject be what it may. The sentiment they instil is "
    "of more value than any thought they may contain. To believe your own thought, to believe that what is true "
    "for you in your private heart is true for all men, that is genius. Speak your latent conviction, and it "
    "shall be the universal sense; for the inmost in due time becomes the outmost. Familiar as the voice of the "
    "mind is to each, the highest merit we ascribe to Moses, Plato, and Milton is, that they set at naught books "
    "and traditions, and spoke not what men but what they thought. A man should learn to detect and watch that "
    "gleam of light which flashes across his mind from within, more than the lustre of the firmament of bards and "
    "sages. Yet he dismisses without notice his thought, because it is his.",
    # H. G. Wells, The War of the Worlds (1898), chapter 1
    "No one would have believed in the last years of the nineteenth century that this world was being watched "
    "keenly and closely by intelligences greater than man's and yet as mortal as his own; that as men busied "
    "themselves about their various concerns they were scrutinised and studied, perhaps almost as narrowly as a "
    "man with a microscope might scrutinise the transient creatures that swarm and multiply in a drop of water. "
    "With infinite complacency men went to and fro over this globe about their little affairs, serene in their "
    "assurance of their empire over matter. No one gave a thought to the older worlds of space as sources of "
    "human danger, or thought of them only to dismiss the idea of life upon them as impossible or improbable. Yet "
    "across the gulf of space, minds that are to our minds as ours are to those of the beasts that perish, "
    "intellects vast and cool and unsympathetic, regarded this earth with envious eyes, and slowly and surely "
    "drew their plans against us.",
]
